package main

import (
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"time"

	corev1 "k8s.io/api/core/v1"
)

// cgroupRoot holds the cgroup v1 hierarchies this node uses: cpu (the CFS quota from a
// container's CPU limit, shares from its request, as a kubelet sets them) and cpuacct (CPU time).
const cgroupRoot = "/sys/fs/cgroup"

const periodMicros = 100_000

// makeCgroups makes the container's cpu and cpuacct groups under <parent>/<pod uid>/<name>;
// ("", "", nil) where this machine has no cgroup v1 cpu hierarchy.
func makeCgroups(parent, podUID string, spec corev1.Container) (string, string, error) {
	cpu := filepath.Join(cgroupRoot, "cpu", parent, podUID, spec.Name)
	if _, err := os.Stat(filepath.Join(cgroupRoot, "cpu", "cgroup.procs")); err != nil {
		return "", "", nil
	}
	if err := os.MkdirAll(cpu, 0o755); err != nil {
		return "", "", fmt.Errorf("cgroup %s: %w", cpu, err)
	}
	quota := int64(-1)
	if limit, ok := spec.Resources.Limits[corev1.ResourceCPU]; ok {
		quota = limit.MilliValue() * periodMicros / 1000
	}
	shares := int64(2)
	if request, ok := spec.Resources.Requests[corev1.ResourceCPU]; ok {
		shares = max(2, request.MilliValue()*1024/1000)
	}
	for file, value := range map[string]int64{"cpu.cfs_period_us": periodMicros, "cpu.cfs_quota_us": quota, "cpu.shares": shares} {
		if err := os.WriteFile(filepath.Join(cpu, file), []byte(strconv.FormatInt(value, 10)), 0o644); err != nil {
			return "", "", fmt.Errorf("cgroup %s: %w", file, err)
		}
	}
	acct := filepath.Join(cgroupRoot, "cpuacct", parent, podUID, spec.Name)
	if same(filepath.Join(cgroupRoot, "cpu"), filepath.Join(cgroupRoot, "cpuacct")) {
		return cpu, "", nil
	}
	if err := os.MkdirAll(acct, 0o755); err != nil {
		return cpu, "", nil
	}
	return cpu, acct, nil
}

func same(a, b string) bool {
	ra, errA := filepath.EvalSymlinks(a)
	rb, errB := filepath.EvalSymlinks(b)
	return errA == nil && errB == nil && ra == rb
}

func cgroupPids(group string) []int {
	if group == "" {
		return nil
	}
	var pids []int
	for _, line := range readLines(filepath.Join(group, "cgroup.procs")) {
		if pid, err := strconv.Atoi(line); err == nil {
			pids = append(pids, pid)
		}
	}
	return pids
}

// removeCgroup removes an emptied group (its last processes may still be exiting).
func removeCgroup(group string) {
	if group == "" {
		return
	}
	for i := 0; i < 50; i++ {
		err := os.Remove(group)
		if err == nil || os.IsNotExist(err) {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	_ = os.Remove(filepath.Dir(group))
}

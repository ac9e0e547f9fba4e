package main

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/virtual-kubelet/virtual-kubelet/node/api"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/kubernetes/third_party/forked/golang/expansion"
)

func everything() labels.Selector { return labels.Everything() }

// podRun is one pod on this node: its folder, its volumes and its containers' processes.
type podRun struct {
	p        *Provider
	dir      string
	mu       sync.Mutex
	pod      *corev1.Pod // the pod as bound, with the status this node reports
	ctrs     map[string]*container
	mounts   map[string]string // volume name -> folder (or host path) on this machine
	sandbox  *sandbox          // the pod's network namespace; set under the provider's lock
	stopping chan struct{}
	stopOnce sync.Once
	done     chan struct{}
}

// container is one container's current process (a new one after each restart).
type container struct {
	spec    corev1.Container
	init    bool
	status  corev1.ContainerStatus
	process *exec.Cmd
	pid     int // the host pid of the container's first process (PID 1 in its namespace)
	cgroup  string
	cpuacct string
	logPath string
	exited  chan struct{}
}

func newPodRun(p *Provider, pod *corev1.Pod) *podRun {
	run := &podRun{
		p:        p,
		dir:      p.podDir(pod),
		pod:      pod.DeepCopy(),
		ctrs:     map[string]*container{},
		mounts:   map[string]string{},
		stopping: make(chan struct{}),
		done:     make(chan struct{}),
	}
	for _, c := range pod.Spec.InitContainers {
		run.ctrs[c.Name] = newContainer(c, true)
	}
	for _, c := range pod.Spec.Containers {
		run.ctrs[c.Name] = newContainer(c, false)
	}
	start := now()
	run.pod.Status = corev1.PodStatus{
		Phase:     corev1.PodPending,
		HostIP:    p.NodeIP,
		HostIPs:   []corev1.HostIP{{IP: p.NodeIP}},
		PodIP:     p.NodeIP,
		PodIPs:    []corev1.PodIP{{IP: p.NodeIP}},
		StartTime: &start,
		QOSClass:  pod.Status.QOSClass,
	}
	run.setCondition(corev1.PodScheduled, true, "")
	run.setCondition(corev1.PodInitialized, len(pod.Spec.InitContainers) == 0, "")
	run.setCondition(corev1.ContainersReady, false, "ContainersNotReady")
	run.setCondition(corev1.PodReady, false, "ContainersNotReady")
	return run
}

func newContainer(spec corev1.Container, init bool) *container {
	return &container{
		spec: spec,
		init: init,
		status: corev1.ContainerStatus{
			Name:  spec.Name,
			Image: spec.Image,
			State: corev1.ContainerState{Waiting: &corev1.ContainerStateWaiting{Reason: "ContainerCreating"}},
		},
	}
}

func (r *podRun) setCondition(kind corev1.PodConditionType, ok bool, reason string) {
	status := corev1.ConditionFalse
	if ok {
		status = corev1.ConditionTrue
		reason = ""
	}
	for i := range r.pod.Status.Conditions {
		c := &r.pod.Status.Conditions[i]
		if c.Type == kind {
			if c.Status != status {
				c.Status, c.Reason, c.LastTransitionTime = status, reason, now()
			}
			return
		}
	}
	r.pod.Status.Conditions = append(r.pod.Status.Conditions,
		corev1.PodCondition{Type: kind, Status: status, Reason: reason, LastTransitionTime: now()})
}

// snapshot is the pod with its containers' statuses, in spec order.
func (r *podRun) snapshot() *corev1.Pod {
	r.mu.Lock()
	defer r.mu.Unlock()
	pod := r.pod.DeepCopy()
	pod.Status.InitContainerStatuses = nil
	pod.Status.ContainerStatuses = nil
	for _, c := range r.pod.Spec.InitContainers {
		pod.Status.InitContainerStatuses = append(pod.Status.InitContainerStatuses, *r.ctrs[c.Name].status.DeepCopy())
	}
	for _, c := range r.pod.Spec.Containers {
		pod.Status.ContainerStatuses = append(pod.Status.ContainerStatuses, *r.ctrs[c.Name].status.DeepCopy())
	}
	return pod
}

func (r *podRun) updateMeta(pod *corev1.Pod) {
	r.mu.Lock()
	r.pod.Labels, r.pod.Annotations = pod.Labels, pod.Annotations
	r.mu.Unlock()
}

func (r *podRun) publish() { r.p.publish(r) }

func (r *podRun) stopped() bool {
	select {
	case <-r.stopping:
		return true
	default:
		return false
	}
}

// fail ends the pod before its containers ran (a volume that cannot be made).
func (r *podRun) fail(reason, message string) {
	r.mu.Lock()
	r.pod.Status.Phase = corev1.PodFailed
	r.pod.Status.Reason, r.pod.Status.Message = reason, message
	r.mu.Unlock()
	r.publish()
}

// run is the pod's life: volumes, init containers one after another, then the containers
// together, restarted as the pod's restartPolicy says, until they end or the pod is deleted.
func (r *podRun) run() {
	defer close(r.done)
	if err := r.prepareVolumes(); err != nil {
		r.fail("VolumeSetupFailed", err.Error())
		return
	}
	cgroup, _, err := makeCgroups(r.p.CgroupParent, string(r.pod.UID), corev1.Container{Name: "sandbox"})
	if err != nil {
		r.fail("CreatePodSandboxError", err.Error())
		return
	}
	sb, err := startSandbox(cgroup)
	if err != nil {
		r.fail("CreatePodSandboxError", err.Error())
		return
	}
	defer func() { sb.close(); removeCgroup(cgroup) }()
	r.p.mu.Lock()
	r.sandbox = sb
	r.p.mu.Unlock()
	r.p.wire(sb)
	r.publish()
	for _, spec := range r.pod.Spec.InitContainers {
		for {
			code := r.runOnce(r.ctrs[spec.Name])
			if r.stopped() {
				r.finish()
				return
			}
			if code == 0 {
				break
			}
			if r.pod.Spec.RestartPolicy == corev1.RestartPolicyNever {
				r.finish()
				return
			}
			if !r.backoff(r.ctrs[spec.Name]) {
				r.finish()
				return
			}
		}
	}
	r.mu.Lock()
	r.setCondition(corev1.PodInitialized, true, "")
	r.pod.Status.Phase = corev1.PodRunning
	r.mu.Unlock()
	var wg sync.WaitGroup
	for _, spec := range r.pod.Spec.Containers {
		wg.Add(1)
		go func(c *container) {
			defer wg.Done()
			for {
				code := r.runOnce(c)
				if r.stopped() || !r.restarts(code) || !r.backoff(c) {
					return
				}
			}
		}(r.ctrs[spec.Name])
	}
	wg.Wait()
	r.finish()
}

func (r *podRun) restarts(code int) bool {
	switch r.pod.Spec.RestartPolicy {
	case corev1.RestartPolicyAlways:
		return true
	case corev1.RestartPolicyOnFailure:
		return code != 0
	}
	return false
}

// backoff waits before a restart (kubelet's CrashLoopBackOff, shortened); false when the pod
// is being deleted meanwhile.
func (r *podRun) backoff(c *container) bool {
	r.mu.Lock()
	delay := time.Duration(1<<min(c.status.RestartCount, 3)) * time.Second
	c.status.LastTerminationState = c.status.State
	c.status.State = corev1.ContainerState{Waiting: &corev1.ContainerStateWaiting{Reason: "CrashLoopBackOff"}}
	c.status.RestartCount++
	r.mu.Unlock()
	r.publish()
	select {
	case <-r.stopping:
		return false
	case <-time.After(delay):
		return true
	}
}

// finish sets the pod's phase from how its containers ended.
func (r *podRun) finish() {
	r.mu.Lock()
	failed := false
	for _, c := range r.ctrs {
		if t := c.status.State.Terminated; t != nil && t.ExitCode != 0 {
			failed = true
		}
		if c.status.State.Terminated == nil && c.status.State.Running == nil && !c.init {
			failed = true // never started: deleted first, or its image is not on this node
		}
		if c.status.State.Running != nil {
			c.status.State = corev1.ContainerState{Terminated: &corev1.ContainerStateTerminated{
				ExitCode: 137, Reason: "Error", FinishedAt: now()}}
			failed = true
		}
		c.status.Ready = false
	}
	if failed {
		r.pod.Status.Phase = corev1.PodFailed
	} else {
		r.pod.Status.Phase = corev1.PodSucceeded
	}
	r.setCondition(corev1.ContainersReady, false, "PodCompleted")
	r.setCondition(corev1.PodReady, false, "PodCompleted")
	r.mu.Unlock()
	r.publish()
}

// runOnce starts the container and waits for its process to end; its exit code.
func (r *podRun) runOnce(c *container) int {
	if r.stopped() {
		return 137
	}
	if err := r.start(c); err != nil {
		r.mu.Lock()
		c.status.State = corev1.ContainerState{Waiting: &corev1.ContainerStateWaiting{
			Reason: err.reason, Message: err.message}}
		r.mu.Unlock()
		r.publish()
		<-r.stopping // kubelet keeps retrying; here nothing changes until the pod goes
		return 128
	}
	r.publish()
	code := 0
	if err := c.process.Wait(); err != nil {
		code = exitCode(err)
	}
	r.mu.Lock()
	started := c.status.State.Running.StartedAt
	reason := "Completed"
	if code != 0 {
		reason = "Error"
	}
	c.status.State = corev1.ContainerState{Terminated: &corev1.ContainerStateTerminated{
		ExitCode: int32(code), Reason: reason, StartedAt: started, FinishedAt: now(),
		ContainerID: c.status.ContainerID}}
	c.status.Ready = false
	c.status.Started = boolPtr(false)
	r.readiness()
	r.mu.Unlock()
	close(c.exited)
	removeCgroup(c.cgroup)
	removeCgroup(c.cpuacct)
	r.publish()
	return code
}

func boolPtr(b bool) *bool { return &b }

func exitCode(err error) int {
	if exit, ok := err.(*exec.ExitError); ok {
		if status, ok := exit.Sys().(syscall.WaitStatus); ok && status.Signaled() {
			return 128 + int(status.Signal())
		}
		return exit.ExitCode()
	}
	return 128
}

// readiness: ready once every container runs (no probes are run here). Called with r.mu held.
func (r *podRun) readiness() {
	all := true
	for _, spec := range r.pod.Spec.Containers {
		if r.ctrs[spec.Name].status.State.Running == nil {
			all = false
		}
	}
	r.setCondition(corev1.ContainersReady, all, "ContainersNotReady")
	r.setCondition(corev1.PodReady, all, "ContainersNotReady")
}

type startError struct{ reason, message string }

// start runs the container: its program from the image's mapping, its environment, a cgroup
// from its CPU limit, and a mount and PID namespace holding its volumes.
func (r *podRun) start(c *container) *startError {
	image, ok := findImage(r.p.Images, c.spec.Image)
	if !ok {
		return &startError{"ErrImagePull", fmt.Sprintf("image %q is not on this node (cluster images.json)", c.spec.Image)}
	}
	resolved, err := r.containerEnv(c.spec)
	if err != nil {
		return &startError{"CreateContainerConfigError", err.Error()}
	}
	env := r.environment(resolved, image, c.spec)
	mapping := expansion.MappingFuncFor(envMap(env))
	argv := []string{}
	command := c.spec.Command
	if len(command) == 0 {
		command = image.Entrypoint
	}
	args := append(append([]string{}, command...), c.spec.Args...)
	if len(image.Replace) > 0 {
		args = image.Replace
	}
	for _, a := range args {
		argv = append(argv, expansion.Expand(a, mapping))
	}
	if len(argv) == 0 {
		return &startError{"CreateContainerError", "no command and no entrypoint"}
	}
	ctrDir := filepath.Join(r.dir, "containers", c.spec.Name)
	if err := os.MkdirAll(filepath.Join(ctrDir, "workdir"), 0o755); err != nil {
		return &startError{"CreateContainerError", err.Error()}
	}
	_ = os.Chmod(filepath.Join(ctrDir, "workdir"), 0o1777) // any runAsUser may write there
	hosts := filepath.Join(ctrDir, "hosts")
	if err := os.WriteFile(hosts, []byte(r.p.hostsFile(r.pod)), 0o644); err != nil {
		return &startError{"CreateContainerError", err.Error()}
	}
	cgroup, cpuacct, err := makeCgroups(r.p.CgroupParent, string(r.pod.UID), c.spec)
	if err != nil {
		return &startError{"CreateContainerError", err.Error()}
	}
	script, err := r.wrapper(c, image, ctrDir, hosts, cgroup, cpuacct)
	if err != nil {
		return &startError{"CreateContainerConfigError", err.Error()}
	}
	c.logPath = filepath.Join(ctrDir, "log")
	logFile, err := os.OpenFile(c.logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return &startError{"CreateContainerError", err.Error()}
	}
	cmd := exec.Command("/bin/sh", append([]string{"-c", script, "container"}, argv...)...)
	cmd.Env = env
	cmd.Dir = ctrDir
	cmd.Stdout, cmd.Stderr = logFile, logFile
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		logFile.Close()
		return &startError{"RunContainerError", err.Error()}
	}
	logFile.Close()
	pid := waitChild(cmd.Process.Pid)
	r.mu.Lock()
	c.process, c.pid, c.cgroup, c.cpuacct = cmd, pid, cgroup, cpuacct
	c.exited = make(chan struct{})
	c.status.ContainerID = fmt.Sprintf("process://%d", pid)
	c.status.ImageID = image.Digest
	c.status.State = corev1.ContainerState{Running: &corev1.ContainerStateRunning{StartedAt: now()}}
	c.status.Started = boolPtr(true)
	c.status.Ready = !c.init
	r.readiness()
	r.mu.Unlock()
	return nil
}

// waitChild is the pid of unshare's forked child (the container's PID 1), or pid itself when it
// cannot be seen within a second.
func waitChild(pid int) int {
	deadline := time.Now().Add(time.Second)
	for time.Now().Before(deadline) {
		data, err := os.ReadFile(fmt.Sprintf("/proc/%d/task/%d/children", pid, pid))
		if err != nil {
			return pid
		}
		if fields := strings.Fields(string(data)); len(fields) > 0 {
			if child, err := strconv.Atoi(fields[0]); err == nil {
				return child
			}
		}
		time.Sleep(5 * time.Millisecond)
	}
	return pid
}

// environment is what the container's process sees: the image's, the container's (resolved by
// containerEnv), and what a runtime and kubelet add. The API server is reached where it listens, not at a Service IP (no
// kube-proxy here).
func (r *podRun) environment(containerEnv []corev1.EnvVar, image Image, spec corev1.Container) []string {
	values := map[string]string{}
	order := []string{}
	set := func(k, v string) {
		if _, ok := values[k]; !ok {
			order = append(order, k)
		}
		values[k] = v
	}
	path := strings.Join(append(append([]string{}, image.Path...), "/usr/local/sbin", "/usr/local/bin", "/usr/sbin", "/usr/bin", "/sbin", "/bin"), ":")
	set("PATH", path)
	set("HOSTNAME", r.pod.Name)
	// A runtime takes HOME from the image's passwd entry for the user; root's is /root, and a
	// user id the image does not name gets "/". (Here containers see this machine's files: a
	// non-root user must not be sent to /root, which it may not read.)
	if user, _ := runAs(r.pod, spec); user == nil || *user == 0 {
		set("HOME", "/root")
	} else {
		set("HOME", "/")
	}
	for k, v := range image.Env {
		set(k, v)
	}
	mapping := expansion.MappingFuncFor(values)
	for _, e := range containerEnv {
		set(e.Name, expansion.Expand(e.Value, mapping))
	}
	if host, port, ok := strings.Cut(r.p.APIServer, ":"); ok {
		set("KUBERNETES_SERVICE_HOST", host)
		set("KUBERNETES_SERVICE_PORT", port)
		set("KUBERNETES_SERVICE_PORT_HTTPS", port)
		set("KUBERNETES_PORT", "tcp://"+r.p.APIServer)
	}
	env := make([]string, 0, len(order))
	for _, k := range order {
		env = append(env, k+"="+values[k])
	}
	return env
}

func envMap(env []string) map[string]string {
	m := map[string]string{}
	for _, kv := range env {
		k, v, _ := strings.Cut(kv, "=")
		m[k] = v
	}
	return m
}

// wrapper is the shell that enters the container: its cgroups, then (in new mount and PID
// namespaces) a private /tmp, its volumes, its /etc/hosts, its own view of the cpu cgroup, its
// working directory and user, then the program as PID 1.
func (r *podRun) wrapper(c *container, image Image, ctrDir, hosts, cgroup, cpuacct string) (string, error) {
	q := shellQuote
	outer := []string{}
	for _, g := range []string{cgroup, cpuacct} {
		if g != "" {
			outer = append(outer, fmt.Sprintf("echo $$ > %s", q(filepath.Join(g, "cgroup.procs"))))
		}
	}
	inner := []string{"mount -t tmpfs -o mode=1777 tmpfs /tmp"}
	inner = append(inner, reachable(image.Reachable)...)
	workdir := c.spec.WorkingDir
	if workdir == "" {
		workdir = image.Workdir
	}
	if workdir == "" {
		workdir = "/"
	}
	if workdir != "/" {
		inner = append(inner, "mkdir -p "+q(workdir), "mount --bind "+q(filepath.Join(ctrDir, "workdir"))+" "+q(workdir))
	}
	for _, m := range c.spec.VolumeMounts {
		source, ok := r.mounts[m.Name]
		if !ok {
			return "", fmt.Errorf("volume %q is not defined", m.Name)
		}
		if m.SubPath != "" {
			source = filepath.Join(source, m.SubPath)
			if _, err := os.Stat(source); os.IsNotExist(err) {
				_ = os.MkdirAll(source, 0o777) // a kubelet makes a missing subPath a folder
			}
		}
		info, err := os.Stat(source)
		if err != nil {
			return "", fmt.Errorf("volume %q: %w", m.Name, err)
		}
		if info.IsDir() {
			inner = append(inner, "mkdir -p "+q(m.MountPath))
		} else {
			inner = append(inner, "mkdir -p "+q(filepath.Dir(m.MountPath)), "touch "+q(m.MountPath))
		}
		inner = append(inner, "mount --bind "+q(source)+" "+q(m.MountPath))
		if m.ReadOnly {
			inner = append(inner, "mount -o remount,bind,ro "+q(m.MountPath))
		}
	}
	for path, file := range image.Files {
		inner = append(inner, "mkdir -p "+q(filepath.Dir(path)), "touch "+q(path), "mount --bind "+q(file)+" "+q(path))
	}
	inner = append(inner, "mount --bind "+q(hosts)+" /etc/hosts")
	if cgroup != "" {
		inner = append(inner, "mount --bind "+q(cgroup)+" /sys/fs/cgroup/cpu")
	}
	inner = append(inner, "cd "+q(workdir))
	run := `exec "$@"`
	if sc := securityContext(r.pod, c.spec); sc != "" {
		run = `exec setpriv ` + sc + ` "$@"`
	}
	inner = append(inner, run)
	outer = append(outer, "exec nsenter --net="+q(r.sandbox.netns)+" unshare -m -p -f --mount-proc --propagation private --kill-child sh -c "+
		q(strings.Join(inner, " && "))+` container "$@"`)
	return strings.Join(outer, "; "), nil
}

// reachable: the commands that let every user reach “paths“: where a folder above one of
// them is closed to other users (no x for others, e.g. /root), an empty tmpfs replaces that
// folder in the container's mount namespace and only the paths below it are bound back in.
func reachable(paths []string) []string {
	q := shellQuote
	byBlocked := map[string][]string{}
	order := []string{}
	for _, path := range paths {
		blocked := ""
		for dir := filepath.Dir(filepath.Clean(path)); ; dir = filepath.Dir(dir) {
			if info, err := os.Stat(dir); err == nil && info.Mode().Perm()&0o001 == 0 {
				blocked = dir // the outermost closed folder wins: keep going up
			}
			if dir == "/" {
				break
			}
		}
		if blocked == "" {
			continue
		}
		if _, seen := byBlocked[blocked]; !seen {
			order = append(order, blocked)
		}
		byBlocked[blocked] = append(byBlocked[blocked], path)
	}
	keep := "/tmp/.reachable" // /tmp is the container's own tmpfs by now
	commands := []string{}
	for _, blocked := range order {
		commands = append(commands, "mkdir -p "+keep, "mount --bind "+q(blocked)+" "+keep,
			"mount -t tmpfs -o mode=0755 tmpfs "+q(blocked))
		for _, path := range byBlocked[blocked] {
			rel, _ := filepath.Rel(blocked, path)
			commands = append(commands, "mkdir -p "+q(path), "mount --bind "+q(filepath.Join(keep, rel))+" "+q(path))
		}
		commands = append(commands, "umount "+keep, "rmdir "+keep)
	}
	return commands
}

// runAs: the container's runAsUser and runAsGroup, the pod's where the container sets none.
func runAs(pod *corev1.Pod, spec corev1.Container) (user, group *int64) {
	if psc := pod.Spec.SecurityContext; psc != nil {
		user, group = psc.RunAsUser, psc.RunAsGroup
	}
	if sc := spec.SecurityContext; sc != nil {
		if sc.RunAsUser != nil {
			user = sc.RunAsUser
		}
		if sc.RunAsGroup != nil {
			group = sc.RunAsGroup
		}
	}
	return user, group
}

// securityContext: setpriv's arguments for the container's runAsUser/runAsGroup ("" for root).
func securityContext(pod *corev1.Pod, spec corev1.Container) string {
	user, group := runAs(pod, spec)
	if user == nil || *user == 0 {
		return ""
	}
	g := *user
	if group != nil {
		g = *group
	}
	return fmt.Sprintf("--reuid=%d --regid=%d --clear-groups", *user, g)
}

func shellQuote(s string) string { return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'" }

// stop is a pod deletion: SIGTERM to each container's PID 1, SIGKILL to what is left after the
// grace period, then the pod's final status.
func (r *podRun) stop(grace time.Duration) {
	r.stopOnce.Do(func() { close(r.stopping) })
	r.signalAll(syscall.SIGTERM)
	select {
	case <-r.done:
		return
	case <-time.After(grace):
	}
	r.signalAll(syscall.SIGKILL)
	select {
	case <-r.done:
	case <-time.After(10 * time.Second):
	}
}

func (r *podRun) signalAll(sig syscall.Signal) {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, c := range r.ctrs {
		if c.status.State.Running == nil || c.process == nil {
			continue
		}
		if sig == syscall.SIGKILL {
			for _, pid := range cgroupPids(c.cgroup) {
				_ = syscall.Kill(pid, sig)
			}
			_ = syscall.Kill(-c.process.Process.Pid, sig)
		}
		_ = syscall.Kill(c.pid, sig)
	}
}

func (r *podRun) cleanup() {
	<-r.done
	_ = os.RemoveAll(r.dir)
	removeCgroup(filepath.Join(cgroupRoot, "cpu", r.p.CgroupParent, string(r.pod.UID)))
	removeCgroup(filepath.Join(cgroupRoot, "cpuacct", r.p.CgroupParent, string(r.pod.UID)))
}

func (r *podRun) logs(name string, opts api.ContainerLogOpts) (io.ReadCloser, error) {
	r.mu.Lock()
	c, ok := r.ctrs[name]
	r.mu.Unlock()
	if !ok || c.logPath == "" {
		return nil, fmt.Errorf("container %q has no logs", name)
	}
	data, err := os.ReadFile(c.logPath)
	if err != nil {
		return nil, err
	}
	if opts.Tail > 0 {
		lines := strings.SplitAfter(string(data), "\n")
		if len(lines) > opts.Tail+1 {
			data = []byte(strings.Join(lines[len(lines)-opts.Tail-1:], ""))
		}
	}
	if opts.LimitBytes > 0 && len(data) > opts.LimitBytes {
		data = data[:opts.LimitBytes]
	}
	return io.NopCloser(bytes.NewReader(data)), nil
}

// exec runs a command inside the container's namespaces, cgroup and environment (how Argo's
// controller signals a container: `argoexec kill 15 1`).
func (r *podRun) exec(ctx context.Context, name string, cmd []string, attach api.AttachIO) error {
	r.mu.Lock()
	c, ok := r.ctrs[name]
	running := ok && c.status.State.Running != nil
	r.mu.Unlock()
	if !running {
		return fmt.Errorf("container %q is not running", name)
	}
	environ, err := os.ReadFile(fmt.Sprintf("/proc/%d/environ", c.pid))
	if err != nil {
		return err
	}
	enter := fmt.Sprintf("echo $$ > %s; exec nsenter -t %d -m -p -n --wd -- \"$@\"",
		shellQuote(filepath.Join(c.cgroup, "cgroup.procs")), c.pid)
	if c.cgroup == "" {
		enter = fmt.Sprintf("exec nsenter -t %d -m -p -n --wd -- \"$@\"", c.pid)
	}
	process := exec.CommandContext(ctx, "/bin/sh", append([]string{"-c", enter, "exec"}, cmd...)...)
	process.Env = strings.Split(strings.TrimRight(string(environ), "\x00"), "\x00")
	if in := attach.Stdin(); in != nil {
		process.Stdin = in
	}
	if out := attach.Stdout(); out != nil {
		process.Stdout = out
		defer out.Close()
	}
	if errOut := attach.Stderr(); errOut != nil {
		process.Stderr = errOut
		defer errOut.Close()
	}
	return process.Run()
}

// readLines is a file's lines (for cgroup.procs).
func readLines(path string) []string {
	f, err := os.Open(path)
	if err != nil {
		return nil
	}
	defer f.Close()
	var lines []string
	scanner := bufio.NewScanner(f)
	for scanner.Scan() {
		lines = append(lines, scanner.Text())
	}
	return lines
}

package main

import (
	"fmt"
	"hash/fnv"
	"io"
	"net"
	"os"
	"os/exec"
	"runtime"
	"strconv"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/labels"
)

// The pods' network. Each pod has a network namespace of its own (its own loopback: two pods may
// listen on one port), held by a sandbox process as a container runtime's pause container holds
// it. There is no bridge between namespaces; the node relays connections in userspace, as
// kube-proxy's userspace mode did:
//   - a Service gets a loopback address (127.x.y.z) that its DNS names resolve to in every pod's
//     /etc/hosts; in every pod an iptables rule sends connections to that address and a Service
//     port to a relay port of the node's (61000 and up), which connects to 127.0.0.1:targetPort
//     inside a running pod the Service selects (a rule, not a listener, at the Service's port:
//     a pod may listen on that port itself, as on a cluster where kube-proxy's rules intercept);
//   - the host's ports named by --host-port (the API server, S3, the metadata service) are
//     relayed from 127.0.0.1:PORT inside every pod to 127.0.0.1:PORT of this machine.
// Nothing is reachable from outside a pod but through these relays, so the sweep's own process
// cannot reach a Service, as on a real cluster.

type sandbox struct {
	process   *exec.Cmd
	netns     string // /proc/<pid>/ns/net
	mu        sync.Mutex
	listeners map[string]net.Listener
	closed    bool
}

// startSandbox starts the pod's network namespace with its loopback up, its process in the
// cgroup given (so that it is found and stopped with the pod's).
func startSandbox(cgroup string) (*sandbox, error) {
	enter := "ip link set lo up && exec sleep infinity"
	if cgroup != "" {
		enter = "echo $$ > " + shellQuote(cgroup+"/cgroup.procs") + " && " + enter
	}
	cmd := exec.Command("unshare", "-n", "--", "sh", "-c", enter)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	s := &sandbox{process: cmd, netns: fmt.Sprintf("/proc/%d/ns/net", cmd.Process.Pid), listeners: map[string]net.Listener{}}
	host, _ := os.Readlink("/proc/self/ns/net")
	deadline := time.Now().Add(5 * time.Second)
	for time.Now().Before(deadline) {
		// Until unshare has run, the process is still in this machine's namespace.
		if ns, err := os.Readlink(s.netns); err != nil || ns == host {
			time.Sleep(5 * time.Millisecond)
			continue
		}
		var probe net.Listener
		err := inNetns(s.netns, func() (err error) { probe, err = net.Listen("tcp", "127.0.0.1:0"); return })
		if err == nil {
			probe.Close()
			return s, nil
		}
		time.Sleep(20 * time.Millisecond)
	}
	s.close()
	return nil, fmt.Errorf("the pod's network namespace did not come up")
}

func (s *sandbox) close() {
	s.mu.Lock()
	s.closed = true
	for _, l := range s.listeners {
		l.Close()
	}
	s.mu.Unlock()
	_ = s.process.Process.Kill()
	_ = s.process.Wait()
}

// inNetns runs fn on a thread inside the network namespace at path (sockets made there stay
// there).
func inNetns(path string, fn func() error) error {
	runtime.LockOSThread()
	self, err := os.Open(fmt.Sprintf("/proc/self/task/%d/ns/net", unix.Gettid()))
	if err != nil {
		runtime.UnlockOSThread()
		return err
	}
	defer self.Close()
	target, err := os.Open(path)
	if err != nil {
		runtime.UnlockOSThread()
		return err
	}
	defer target.Close()
	if err := unix.Setns(int(target.Fd()), unix.CLONE_NEWNET); err != nil {
		runtime.UnlockOSThread()
		return err
	}
	result := fn()
	if err := unix.Setns(int(self.Fd()), unix.CLONE_NEWNET); err != nil {
		return err // the thread stays locked and ends with this goroutine
	}
	runtime.UnlockOSThread()
	return result
}

// listen makes sure a relay listens at addr in the pod, dialling with dial; with a Service's
// address (intercept), connections to it are sent to addr by an iptables rule of the pod's.
func (s *sandbox) listen(addr, intercept string, dial func() (net.Conn, error)) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed || s.listeners[addr] != nil {
		return
	}
	var l net.Listener
	if err := inNetns(s.netns, func() (err error) { l, err = net.Listen("tcp", addr); return }); err != nil {
		return // the pod's own program listens there
	}
	if intercept != "" {
		host, port, _ := net.SplitHostPort(intercept)
		rule := exec.Command("nsenter", "--net="+s.netns, "iptables", "-w", "-t", "nat", "-A", "OUTPUT",
			"-d", host+"/32", "-p", "tcp", "--dport", port, "-j", "DNAT", "--to-destination", addr)
		if out, err := rule.CombinedOutput(); err != nil {
			fmt.Fprintf(os.Stderr, "iptables in %s: %v: %s\n", s.netns, err, out)
			l.Close()
			return
		}
	}
	s.listeners[addr] = l
	go func() {
		for {
			conn, err := l.Accept()
			if err != nil {
				return
			}
			go relay(conn, dial)
		}
	}()
}

func relay(conn net.Conn, dial func() (net.Conn, error)) {
	defer conn.Close()
	upstream, err := dial()
	if err != nil {
		return
	}
	defer upstream.Close()
	done := make(chan struct{}, 2)
	go func() { _, _ = io.Copy(upstream, conn); closeWrite(upstream); done <- struct{}{} }()
	go func() { _, _ = io.Copy(conn, upstream); closeWrite(conn); done <- struct{}{} }()
	<-done
	<-done
}

func closeWrite(c net.Conn) {
	if tcp, ok := c.(*net.TCPConn); ok {
		_ = tcp.CloseWrite()
	}
}

// serviceAddress is the loopback address a Service's names resolve to.
func serviceAddress(s *corev1.Service) string {
	h := fnv.New32a()
	_, _ = h.Write([]byte(s.Namespace + "/" + s.Name))
	v := h.Sum32()
	return fmt.Sprintf("127.%d.%d.%d", 10+(v>>16)%200, (v>>8)&255, 1+(v&255)%254)
}

// wire sets up the relays of one pod: the host's ports and every Service's.
func (p *Provider) wire(s *sandbox) {
	for _, port := range p.HostPorts {
		target := net.JoinHostPort("127.0.0.1", strconv.Itoa(port))
		s.listen(target, "", func() (net.Conn, error) { return net.DialTimeout("tcp", target, 10*time.Second) })
	}
	services, _ := p.Services.List(labels.Everything())
	for _, svc := range services {
		if len(svc.Spec.Selector) == 0 {
			continue
		}
		for _, port := range svc.Spec.Ports {
			svc, port := svc, port
			intercept := net.JoinHostPort(serviceAddress(svc), strconv.Itoa(int(port.Port)))
			relay := net.JoinHostPort("127.0.0.1", strconv.Itoa(p.relayPort(intercept)))
			s.listen(relay, intercept, func() (net.Conn, error) { return p.dialService(svc, port) })
		}
	}
}

// relayPort is the node's port for one Service address and port, the same in every pod.
func (p *Provider) relayPort(intercept string) int {
	p.mu.Lock()
	defer p.mu.Unlock()
	if port, ok := p.relays[intercept]; ok {
		return port
	}
	port := 61000 + len(p.relays)
	p.relays[intercept] = port
	return port
}

// dialService connects to the Service's target port inside a running pod it selects.
func (p *Provider) dialService(svc *corev1.Service, port corev1.ServicePort) (net.Conn, error) {
	selector := labels.SelectorFromSet(svc.Spec.Selector)
	for _, run := range p.running() {
		pod := run.snapshot()
		if pod.Namespace != svc.Namespace || pod.Status.Phase != corev1.PodRunning || !selector.Matches(labels.Set(pod.Labels)) {
			continue
		}
		target := port.TargetPort.IntValue()
		if port.TargetPort.StrVal != "" {
			target = namedPort(pod, port.TargetPort.StrVal)
		}
		if target == 0 {
			target = int(port.Port)
		}
		var conn net.Conn
		err := inNetns(run.sandbox.netns, func() (err error) {
			conn, err = net.DialTimeout("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(target)), 10*time.Second)
			return
		})
		if err == nil {
			return conn, nil
		}
	}
	return nil, fmt.Errorf("no running pod behind %s/%s", svc.Namespace, svc.Name)
}

func namedPort(pod *corev1.Pod, name string) int {
	for _, c := range pod.Spec.Containers {
		for _, port := range c.Ports {
			if port.Name == name {
				return int(port.ContainerPort)
			}
		}
	}
	return 0
}

// running is every pod whose sandbox is up.
func (p *Provider) running() []*podRun {
	p.mu.Lock()
	defer p.mu.Unlock()
	runs := []*podRun{}
	for _, run := range p.pods {
		if run.sandbox != nil {
			runs = append(runs, run)
		}
	}
	return runs
}

// rewire keeps every pod's relays up to date with the Services (a Service made after a pod
// started is reachable from it a moment later, as kube-proxy's rules follow Services).
func (p *Provider) rewire(stop <-chan struct{}) {
	for {
		select {
		case <-stop:
			return
		case <-time.After(2 * time.Second):
		}
		for _, run := range p.running() {
			p.wire(run.sandbox)
		}
	}
}

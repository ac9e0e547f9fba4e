// Command node is the cluster's one simulated part: a Kubernetes node whose pods run as processes.
//
// virtual-kubelet's node library does what a kubelet does towards the API server (the Node and its
// Lease, watching the pods bound to it, resolving their environment from the downward API,
// Secrets, ConfigMaps and Services, writing pod status, finishing deletions, and serving the
// kubelet API that `kubectl exec` and `logs` reach through the API server: Argo's controller
// signals containers through exec). The provider in provider.go runs each container as a process
// tree in its own mount and PID namespaces and CPU cgroup, instead of in a container runtime.
//
//	node --kubeconfig K --name N --root DIR --images images.json --listen 127.0.0.1:10250 \
//	     --tls-cert C --tls-key K --client-ca CA --apiserver 127.0.0.1:6443
package main

import (
	"context"
	"crypto/tls"
	"flag"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"syscall"
	"time"

	vklog "github.com/virtual-kubelet/virtual-kubelet/log"
	vkslog "github.com/virtual-kubelet/virtual-kubelet/log/slog"
	"github.com/virtual-kubelet/virtual-kubelet/node"
	"github.com/virtual-kubelet/virtual-kubelet/node/nodeutil"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"
)

func main() {
	var opts options
	flag.StringVar(&opts.kubeconfig, "kubeconfig", "", "kubeconfig of the node's identity")
	flag.StringVar(&opts.name, "name", "node-0", "the Node's name")
	flag.StringVar(&opts.root, "root", "/var/lib/torchperf-node", "where pods' folders live")
	flag.StringVar(&opts.images, "images", "", "JSON file mapping images to local programs")
	flag.StringVar(&opts.listen, "listen", "127.0.0.1:10250", "the kubelet API's address")
	flag.StringVar(&opts.tlsCert, "tls-cert", "", "the kubelet API's serving certificate")
	flag.StringVar(&opts.tlsKey, "tls-key", "", "the kubelet API's serving key")
	flag.StringVar(&opts.clientCA, "client-ca", "", "CA of the API server's client certificate")
	flag.StringVar(&opts.apiserver, "apiserver", "", "host:port pods reach the API server at")
	flag.StringVar(&opts.cgroupParent, "cgroup-parent", "torchperf-node", "parent of pods' cgroups")
	flag.StringVar(&opts.hostPorts, "host-ports", "", "comma-separated ports of this machine pods reach at 127.0.0.1")
	flag.IntVar(&opts.cpu, "cpu", 0, "CPU capacity (0: this machine's cores)")
	flag.IntVar(&opts.memoryMiB, "memory-mib", 16384, "memory capacity in MiB")
	flag.IntVar(&opts.maxPods, "max-pods", 110, "pod capacity")
	flag.IntVar(&opts.diskGiB, "disk-gib", 100, "ephemeral-storage capacity in GiB")
	flag.Parse()
	if err := run(opts); err != nil {
		fmt.Fprintln(os.Stderr, "node:", err)
		os.Exit(1)
	}
}

type options struct {
	kubeconfig, name, root, images, listen, tlsCert, tlsKey, clientCA, apiserver string
	cgroupParent, hostPorts                                                      string
	cpu, memoryMiB, maxPods, diskGiB                                             int
}

func run(opts options) error {
	// virtual-kubelet logs nothing unless given a logger: warnings and errors go to stderr.
	vklog.L = vkslog.FromSlog(slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelInfo})))
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()

	images, err := loadImages(opts.images)
	if err != nil {
		return err
	}
	config, err := clientcmd.BuildConfigFromFlags("", opts.kubeconfig)
	if err != nil {
		return err
	}
	client, err := kubernetes.NewForConfig(config)
	if err != nil {
		return err
	}
	host, port, err := net.SplitHostPort(opts.listen)
	if err != nil {
		return err
	}
	kubeletPort, _ := strconv.Atoi(port)
	if opts.cpu == 0 {
		opts.cpu = cpuCount()
	}

	hostPorts := []int{}
	for _, field := range strings.FieldsFunc(opts.hostPorts, func(r rune) bool { return r == ',' }) {
		port, err := strconv.Atoi(field)
		if err != nil {
			return fmt.Errorf("--host-ports: %w", err)
		}
		hostPorts = append(hostPorts, port)
	}
	var provider *Provider
	newProvider := func(cfg nodeutil.ProviderConfig) (nodeutil.Provider, node.NodeProvider, error) {
		provider = NewProvider(ProviderSettings{
			NodeName:     opts.name,
			NodeIP:       host,
			Root:         opts.root,
			Images:       images,
			APIServer:    opts.apiserver,
			CgroupParent: opts.cgroupParent,
			HostPorts:    hostPorts,
			Client:       client,
			Secrets:      cfg.Secrets,
			ConfigMaps:   cfg.ConfigMaps,
			Services:     cfg.Services,
		})
		describeNode(cfg.Node, host, int32(kubeletPort), opts)
		return provider, nil, nil
	}

	mux := http.NewServeMux()
	n, err := nodeutil.NewNode(opts.name, newProvider,
		nodeutil.WithClient(client),
		nodeutil.AttachProviderRoutes(mux),
		nodeutil.WithTLSConfig(
			nodeutil.WithKeyPairFromPath(opts.tlsCert, opts.tlsKey),
			nodeutil.WithCAFromPath(opts.clientCA),
			func(c *tls.Config) error { c.ClientAuth = tls.RequireAndVerifyClientCert; return nil },
		),
		func(c *nodeutil.NodeConfig) error {
			c.HTTPListenAddr = opts.listen
			c.Handler = mux
			c.NumWorkers = 4
			c.InformerResyncPeriod = 30 * time.Second
			c.SkipDownwardAPIResolution = true // env.go resolves it, status.hostIP included
			return nil
		},
	)
	if err != nil {
		return err
	}
	go provider.rewire(ctx.Done())
	err = n.Run(ctx)
	provider.Shutdown() // the node's pods go with it
	if err != nil && ctx.Err() == nil {
		return err
	}
	return nil
}

// describeNode sets what the scheduler and the API server read of the node: its capacity, its
// address and the kubelet API's port.
func describeNode(n *corev1.Node, ip string, kubeletPort int32, opts options) {
	capacity := corev1.ResourceList{
		corev1.ResourceCPU:    *resource.NewQuantity(int64(opts.cpu), resource.DecimalSI),
		corev1.ResourceMemory: *resource.NewQuantity(int64(opts.memoryMiB)<<20, resource.BinarySI),
		corev1.ResourcePods:   *resource.NewQuantity(int64(opts.maxPods), resource.DecimalSI),
		// Pods' folders live on this machine's disk; Metaflow's steps request 10 GB of it.
		corev1.ResourceEphemeralStorage: *resource.NewQuantity(int64(opts.diskGiB)<<30, resource.BinarySI),
	}
	n.Labels["kubernetes.io/os"] = "linux"
	n.Labels["kubernetes.io/arch"] = "amd64"
	n.Labels["node.kubernetes.io/instance-type"] = "processes"
	n.Status.Capacity = capacity
	n.Status.Allocatable = capacity
	n.Status.Addresses = []corev1.NodeAddress{
		{Type: corev1.NodeInternalIP, Address: ip},
		{Type: corev1.NodeHostName, Address: opts.name},
	}
	n.Status.DaemonEndpoints.KubeletEndpoint.Port = kubeletPort
	n.Status.NodeInfo.OperatingSystem = "linux"
	n.Status.NodeInfo.Architecture = "amd64"
	n.Status.NodeInfo.KubeletVersion = "v1.37.2-processes"
	n.Status.NodeInfo.ContainerRuntimeVersion = "processes://1"
	for i := range n.Status.Conditions {
		c := &n.Status.Conditions[i]
		if c.Type != corev1.NodeReady {
			c.Status = corev1.ConditionFalse
			c.Reason = "KubeletHasNoPressure"
		}
	}
}

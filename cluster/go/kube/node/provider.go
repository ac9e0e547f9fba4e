package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"runtime"
	"sort"
	"strings"
	"sync"
	"time"

	dto "github.com/prometheus/client_model/go"
	"github.com/virtual-kubelet/virtual-kubelet/errdefs"
	"github.com/virtual-kubelet/virtual-kubelet/node/api"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	corev1listers "k8s.io/client-go/listers/core/v1"
	statsv1alpha1 "k8s.io/kubelet/pkg/apis/stats/v1alpha1"
)

// Image is what an image reference stands for on this node: the programs on its PATH, its
// entrypoint, working directory and environment (a container image's config, without a
// filesystem of its own).
type Image struct {
	Match      string            `json:"match"`      // the reference's repository, e.g. quay.io/argoproj/argoexec
	Path       []string          `json:"path"`       // folders put first on PATH
	Entrypoint []string          `json:"entrypoint"` // used when the container sets no command
	Workdir    string            `json:"workdir"`    // used when the container sets no workingDir
	Env        map[string]string `json:"env"`        // the image's own environment
	Digest     string            `json:"digest"`     // reported as the container's imageID
	Files      map[string]string `json:"files"`      // container path -> file of this machine
	// Reachable: folders of this machine the image's programs need (its interpreter's prefix)
	// that may sit below a folder other users cannot enter (/root): a container of any user
	// reaches them, as an image's own files, and nothing else of that folder.
	Reachable []string `json:"reachable"`
	// Replace, when set, runs instead of the container's command and args: for an image whose
	// program is not built here and that the cluster can do without (e.g. a metrics exporter).
	Replace []string `json:"replace"`
}

func loadImages(path string) ([]Image, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("images: %w", err)
	}
	var file struct {
		Images []Image `json:"images"`
	}
	if err := json.Unmarshal(data, &file); err != nil {
		return nil, fmt.Errorf("images %s: %w", path, err)
	}
	return file.Images, nil
}

// repository is an image reference without its tag or digest.
func repository(ref string) string {
	if at := strings.Index(ref, "@"); at >= 0 {
		ref = ref[:at]
	}
	if colon := strings.LastIndex(ref, ":"); colon > strings.LastIndex(ref, "/") {
		ref = ref[:colon]
	}
	return ref
}

func findImage(images []Image, ref string) (Image, bool) {
	repo := repository(ref)
	for _, image := range images {
		if image.Match == repo {
			return image, true
		}
	}
	return Image{}, false
}

func cpuCount() int { return runtime.NumCPU() }

// ProviderSettings is what the provider needs of the node and the cluster.
type ProviderSettings struct {
	NodeName, NodeIP, Root, APIServer, CgroupParent string
	HostPorts                                       []int // this machine's ports pods reach at 127.0.0.1
	Images                                          []Image
	Client                                          kubernetes.Interface
	Secrets                                         corev1listers.SecretLister
	ConfigMaps                                      corev1listers.ConfigMapLister
	Services                                        corev1listers.ServiceLister
}

// Provider runs the pods bound to this node as process trees (virtual-kubelet's
// PodLifecycleHandler and PodNotifier).
type Provider struct {
	ProviderSettings
	mu     sync.Mutex
	pods   map[string]*podRun // by namespace/name
	relays map[string]int     // Service address:port -> the node's relay port (network.go)
	notify func(*corev1.Pod)
}

func NewProvider(s ProviderSettings) *Provider {
	return &Provider{ProviderSettings: s, pods: map[string]*podRun{}, relays: map[string]int{}, notify: func(*corev1.Pod) {}}
}

func key(namespace, name string) string { return namespace + "/" + name }

func (p *Provider) NotifyPods(_ context.Context, notify func(*corev1.Pod)) {
	p.mu.Lock()
	p.notify = notify
	p.mu.Unlock()
}

func (p *Provider) publish(run *podRun) {
	p.mu.Lock()
	notify := p.notify
	p.mu.Unlock()
	notify(run.snapshot())
}

func (p *Provider) CreatePod(ctx context.Context, pod *corev1.Pod) error {
	p.mu.Lock()
	if _, ok := p.pods[key(pod.Namespace, pod.Name)]; ok {
		p.mu.Unlock()
		return nil
	}
	run := newPodRun(p, pod)
	p.pods[key(pod.Namespace, pod.Name)] = run
	p.mu.Unlock()
	go run.run()
	return nil
}

// UpdatePod: a running pod's spec changes only in what a kubelet also ignores here (labels,
// annotations, activeDeadlineSeconds is enforced by the API's controllers).
func (p *Provider) UpdatePod(ctx context.Context, pod *corev1.Pod) error {
	if run := p.get(pod.Namespace, pod.Name); run != nil {
		run.updateMeta(pod)
	}
	return nil
}

func (p *Provider) DeletePod(ctx context.Context, pod *corev1.Pod) error {
	run := p.get(pod.Namespace, pod.Name)
	if run == nil {
		return errdefs.NotFound("pod not found")
	}
	grace := int64(30)
	if pod.DeletionGracePeriodSeconds != nil {
		grace = *pod.DeletionGracePeriodSeconds
	} else if pod.Spec.TerminationGracePeriodSeconds != nil {
		grace = *pod.Spec.TerminationGracePeriodSeconds
	}
	go func() {
		run.stop(time.Duration(grace) * time.Second)
		p.mu.Lock()
		delete(p.pods, key(pod.Namespace, pod.Name))
		p.mu.Unlock()
		run.cleanup()
	}()
	return nil
}

func (p *Provider) get(namespace, name string) *podRun {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.pods[key(namespace, name)]
}

func (p *Provider) GetPod(ctx context.Context, namespace, name string) (*corev1.Pod, error) {
	run := p.get(namespace, name)
	if run == nil {
		return nil, errdefs.NotFound("pod not found")
	}
	return run.snapshot(), nil
}

func (p *Provider) GetPodStatus(ctx context.Context, namespace, name string) (*corev1.PodStatus, error) {
	pod, err := p.GetPod(ctx, namespace, name)
	if err != nil {
		return nil, err
	}
	return &pod.Status, nil
}

func (p *Provider) GetPods(ctx context.Context) ([]*corev1.Pod, error) {
	p.mu.Lock()
	runs := make([]*podRun, 0, len(p.pods))
	for _, run := range p.pods {
		runs = append(runs, run)
	}
	p.mu.Unlock()
	pods := make([]*corev1.Pod, 0, len(runs))
	for _, run := range runs {
		pods = append(pods, run.snapshot())
	}
	return pods, nil
}

// Shutdown stops every pod at once (the node is going away with its processes).
func (p *Provider) Shutdown() {
	p.mu.Lock()
	runs := make([]*podRun, 0, len(p.pods))
	for _, run := range p.pods {
		runs = append(runs, run)
	}
	p.mu.Unlock()
	var wg sync.WaitGroup
	for _, run := range runs {
		wg.Add(1)
		go func(run *podRun) { defer wg.Done(); run.stop(2 * time.Second); run.cleanup() }(run)
	}
	wg.Wait()
}

func (p *Provider) GetContainerLogs(ctx context.Context, namespace, podName, containerName string, opts api.ContainerLogOpts) (io.ReadCloser, error) {
	run := p.get(namespace, podName)
	if run == nil {
		return nil, errdefs.NotFound("pod not found")
	}
	return run.logs(containerName, opts)
}

func (p *Provider) RunInContainer(ctx context.Context, namespace, podName, containerName string, cmd []string, attach api.AttachIO) error {
	run := p.get(namespace, podName)
	if run == nil {
		return errdefs.NotFound("pod not found")
	}
	return run.exec(ctx, containerName, cmd, attach)
}

func (p *Provider) AttachToContainer(ctx context.Context, namespace, podName, containerName string, attach api.AttachIO) error {
	return errdefs.InvalidInput("attach is not supported by this node")
}

func (p *Provider) GetStatsSummary(context.Context) (*statsv1alpha1.Summary, error) {
	return &statsv1alpha1.Summary{}, nil
}

func (p *Provider) GetMetricsResource(context.Context) ([]*dto.MetricFamily, error) {
	return nil, nil
}

func (p *Provider) PortForward(ctx context.Context, namespace, pod string, port int32, stream io.ReadWriteCloser) error {
	return errdefs.InvalidInput("port-forward is not supported by this node: pods listen on the node's own addresses")
}

// hostsFile is the pod's /etc/hosts: every Service's DNS names point at its loopback address,
// where the node relays to the pods behind it (network.go).
func (p *Provider) hostsFile(pod *corev1.Pod) string {
	lines := []string{
		"127.0.0.1\tlocalhost",
		fmt.Sprintf("%s\t%s", p.NodeIP, pod.Name),
	}
	services, _ := p.Services.List(everything())
	entries := []string{}
	for _, s := range services {
		names := fmt.Sprintf("%s.%s %s.%s.svc %s.%s.svc.cluster.local",
			s.Name, s.Namespace, s.Name, s.Namespace, s.Name, s.Namespace)
		if s.Namespace == pod.Namespace {
			names += " " + s.Name
		}
		entries = append(entries, serviceAddress(s)+"\t"+names)
	}
	sort.Strings(entries)
	lines = append(lines, entries...)
	return strings.Join(lines, "\n") + "\n"
}

func now() metav1.Time { return metav1.NewTime(time.Now()) }

func (p *Provider) podDir(pod *corev1.Pod) string {
	return filepath.Join(p.Root, "pods", string(pod.UID))
}

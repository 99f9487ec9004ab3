package deploy

// The chart against a real Kubernetes control plane: etcd, kube-apiserver,
// kube-controller-manager and kube-scheduler built from the Go module proxy
// (`make control-plane`: tools/kube, tools/etcd), with kwok playing the
// kubelet of one node sized like a laptop's cluster (2 CPUs, 4 GiB). So the
// API server's own validation and admission judge every object, the
// controllers create the pods, the scheduler places them against their
// requests, Helm's lookup reads real Secrets and `helm install --wait`
// waits for real readiness. No container runs: kwok marks a scheduled pod
// Running and Ready at once, so images, probes and the processes inside
// stay unverified here (the README lists what).

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"net"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"helm.sh/helm/v3/pkg/action"
	"helm.sh/helm/v3/pkg/chart/loader"
	"helm.sh/helm/v3/pkg/releaseutil"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/cli-runtime/pkg/genericclioptions"
	"k8s.io/client-go/discovery/cached/memory"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/restmapper"
	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"
	"sigs.k8s.io/yaml"
)

// controlPlaneFiles are what `make control-plane` puts into .bin/k8s/.
var controlPlaneFiles = []string{"etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "kwok", "kwok-stages.yaml"}

const (
	// helmTimeout bounds each `helm install --wait` and uninstall; kwok
	// makes pods Ready within seconds of being scheduled.
	helmTimeout = 3 * time.Minute
	// laptop is the one node: what `minikube start --cpus 2 --memory 4096`
	// or Docker Desktop with 2 CPUs and 4 GiB gives kind.
	laptop = "laptop"
)

// controlPlaneDir is where the control plane's binaries are:
// $SWITCHYARD_K8S_BIN (make k8s-check sets it, and then their absence
// fails the test) or ../.bin/k8s, where their absence skips it.
func controlPlaneDir(t *testing.T) string {
	t.Helper()
	dir, required := os.LookupEnv("SWITCHYARD_K8S_BIN")
	if !required {
		dir = "../.bin/k8s"
	}
	for _, f := range controlPlaneFiles {
		if _, err := os.Stat(filepath.Join(dir, f)); err != nil {
			if required {
				t.Fatalf("control plane: %v (make control-plane builds it)", err)
			}
			t.Skipf("no control plane in %s (%v): `make k8s-check` builds it and runs this test", dir, err)
		}
	}
	abs, err := filepath.Abs(dir)
	if err != nil {
		t.Fatal(err)
	}
	return abs
}

// process is a running control-plane program.
type process struct {
	name, log string
	exited    chan struct{} // closed when it has exited; err says how
	err       error
}

// controlPlane is a running control plane, its files in dir.
type controlPlane struct {
	dir        string
	kubeconfig string
	config     *rest.Config
	client     kubernetes.Interface
	procs      []*process
}

// freePort returns a loopback TCP port nobody listens on now.
func freePort(t *testing.T) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// start runs bin/name with args, its output in dir/name.log, and stops it
// when the test ends.
func (cp *controlPlane) start(t *testing.T, bin, name string, args ...string) {
	t.Helper()
	p := &process{name: name, log: filepath.Join(cp.dir, name+".log"), exited: make(chan struct{})}
	out, err := os.Create(p.log)
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(filepath.Join(bin, name), args...)
	cmd.Stdout, cmd.Stderr = out, out
	// Killed with the test binary, should it die without cleaning up.
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		t.Fatalf("start %s: %v", name, err)
	}
	go func() {
		p.err = cmd.Wait()
		out.Close()
		close(p.exited)
	}()
	cp.procs = append(cp.procs, p)
	t.Cleanup(func() {
		_ = cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-p.exited:
		case <-time.After(10 * time.Second):
			_ = cmd.Process.Kill()
			<-p.exited
		}
	})
}

// poll calls cond until it reports true. It fails the test with cond's
// last error when timeout passes first, or at once when a control-plane
// program has exited.
func (cp *controlPlane) poll(t *testing.T, timeout time.Duration, what string, cond func(ctx context.Context) (bool, error)) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		ok, err := cond(ctx)
		cancel()
		if ok {
			return
		}
		for _, p := range cp.procs {
			select {
			case <-p.exited:
				t.Fatalf("waiting for %s: %s exited: %v", what, p.name, p.err)
			default:
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for %s (last error: %v)", timeout, what, err)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// startControlPlane starts etcd, kube-apiserver, kube-controller-manager,
// kube-scheduler and kwok from bin, on loopback, and waits until the API
// server is ready. Everyone, the test included, is one administrator
// (group system:masters) authenticated by a static token: RBAC is on, as
// in any cluster, but this cluster has no other users.
func startControlPlane(t *testing.T, bin string) *controlPlane {
	t.Helper()
	cp := &controlPlane{dir: t.TempDir()}
	t.Cleanup(func() {
		if t.Failed() {
			for _, p := range cp.procs {
				t.Logf("last lines of %s:\n%s", p.log, tail(p.log, 25))
			}
		}
	})
	file := func(name, content string) string {
		path := filepath.Join(cp.dir, name)
		if err := os.WriteFile(path, []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
		return path
	}
	token := rand.Text()
	tokens := file("tokens.csv", token+",admin,admin,system:masters\n")
	// The key that signs and verifies service account tokens; kube-apiserver
	// refuses to start without one.
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	der, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	saKey := file("sa.key", string(pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: der})))

	etcdPort, peerPort, apiPort := freePort(t), freePort(t), freePort(t)
	etcdURL, peerURL := fmt.Sprintf("http://127.0.0.1:%d", etcdPort), fmt.Sprintf("http://127.0.0.1:%d", peerPort)
	cp.kubeconfig = filepath.Join(cp.dir, "kubeconfig")
	kubeconfig := clientcmdapi.NewConfig()
	// The API server's certificate is self-signed (--cert-dir), for
	// loopback only.
	kubeconfig.Clusters["local"] = &clientcmdapi.Cluster{Server: fmt.Sprintf("https://127.0.0.1:%d", apiPort), InsecureSkipTLSVerify: true}
	kubeconfig.AuthInfos["admin"] = &clientcmdapi.AuthInfo{Token: token}
	kubeconfig.Contexts["local"] = &clientcmdapi.Context{Cluster: "local", AuthInfo: "admin"}
	kubeconfig.CurrentContext = "local"
	if err := clientcmd.WriteToFile(*kubeconfig, cp.kubeconfig); err != nil {
		t.Fatal(err)
	}

	cp.start(t, bin, "etcd", "--name=k8s-check", "--data-dir="+filepath.Join(cp.dir, "etcd"),
		"--listen-client-urls="+etcdURL, "--advertise-client-urls="+etcdURL,
		"--listen-peer-urls="+peerURL, "--initial-advertise-peer-urls="+peerURL, "--initial-cluster=k8s-check="+peerURL,
		// A throw-away store: no fsync, which a busy test machine's disk
		// would make the slowest part of every write.
		"--unsafe-no-fsync", "--log-level=warn")
	cp.start(t, bin, "kube-apiserver", "--etcd-servers="+etcdURL,
		"--bind-address=127.0.0.1", "--advertise-address=127.0.0.1", fmt.Sprintf("--secure-port=%d", apiPort),
		"--cert-dir="+filepath.Join(cp.dir, "pki"), "--token-auth-file="+tokens, "--authorization-mode=RBAC",
		"--service-account-issuer=https://kubernetes.default.svc.cluster.local",
		"--service-account-key-file="+saKey, "--service-account-signing-key-file="+saKey,
		"--service-cluster-ip-range=10.96.0.0/16",
		// The kubernetes Service's endpoint would be the advertised
		// loopback address, which endpoint validation refuses.
		"--endpoint-reconciler-type=none")

	cp.config, err = clientcmd.BuildConfigFromFlags("", cp.kubeconfig)
	if err != nil {
		t.Fatal(err)
	}
	cp.config.QPS, cp.config.Burst = 50, 100
	cp.client, err = kubernetes.NewForConfig(cp.config)
	if err != nil {
		t.Fatal(err)
	}
	cp.poll(t, 2*time.Minute, "the API server to be ready", func(ctx context.Context) (bool, error) {
		_, err := cp.client.Discovery().RESTClient().Get().AbsPath("/readyz").DoRaw(ctx)
		return err == nil, err
	})

	// Neither serves HTTPS (--secure-port=0): nothing here scrapes them.
	cp.start(t, bin, "kube-controller-manager", "--kubeconfig="+cp.kubeconfig, "--leader-elect=false", "--secure-port=0")
	cp.start(t, bin, "kube-scheduler", "--kubeconfig="+cp.kubeconfig, "--leader-elect=false", "--secure-port=0")
	// The stages are kwokctl's defaults: nodes become Ready and keep a
	// lease, a scheduled pod becomes Running and Ready, a deleted one goes.
	// The lease duration must be given, as kwokctl does: without it kwok
	// renews no lease, and the controller manager marks the node NotReady
	// (and its pods not Ready) 40 seconds after its last heartbeat.
	cp.start(t, bin, "kwok", "--kubeconfig="+cp.kubeconfig, "--config="+filepath.Join(bin, "kwok-stages.yaml"),
		"--manage-all-nodes=true", "--node-lease-duration-seconds=40")
	return cp
}

// tail returns the last n lines of the file at path.
func tail(path string, n int) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return err.Error()
	}
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	return strings.Join(lines[max(0, len(lines)-n):], "\n")
}

// addNode registers a node of the given capacity, which kwok manages, and
// waits until the scheduler may use it (Ready, no taints).
func (cp *controlPlane) addNode(t *testing.T, name, cpu, memory string) {
	t.Helper()
	capacity := corev1.ResourceList{
		corev1.ResourceCPU:    resource.MustParse(cpu),
		corev1.ResourceMemory: resource.MustParse(memory),
		corev1.ResourcePods:   resource.MustParse("110"),
	}
	node := &corev1.Node{
		ObjectMeta: metav1.ObjectMeta{Name: name, Labels: map[string]string{
			"kubernetes.io/hostname": name, "kubernetes.io/os": "linux", "kubernetes.io/arch": "amd64",
		}},
		Status: corev1.NodeStatus{Capacity: capacity, Allocatable: capacity},
	}
	if _, err := cp.client.CoreV1().Nodes().Create(context.Background(), node, metav1.CreateOptions{}); err != nil {
		t.Fatalf("create node %s: %v", name, err)
	}
	cp.poll(t, time.Minute, "node "+name+" to be Ready and untainted", func(ctx context.Context) (bool, error) {
		n, err := cp.client.CoreV1().Nodes().Get(ctx, name, metav1.GetOptions{})
		if err != nil {
			return false, err
		}
		for _, c := range n.Status.Conditions {
			if c.Type == corev1.NodeReady {
				return c.Status == corev1.ConditionTrue && len(n.Spec.Taints) == 0, fmt.Errorf("ready %s, taints %v", c.Status, n.Spec.Taints)
			}
		}
		return false, fmt.Errorf("no Ready condition yet")
	})
}

// createNamespace creates ns enforcing the restricted Pod Security
// Standard and waits for its default ServiceAccount (which the controller
// manager creates, and without which no pod using it is admitted).
func (cp *controlPlane) createNamespace(t *testing.T, ns string) {
	t.Helper()
	_, err := cp.client.CoreV1().Namespaces().Create(context.Background(), &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{
		Name: ns,
		Labels: map[string]string{
			"pod-security.kubernetes.io/enforce":         "restricted",
			"pod-security.kubernetes.io/enforce-version": "latest",
		},
	}}, metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("create namespace %s: %v", ns, err)
	}
	cp.poll(t, time.Minute, "the default ServiceAccount of "+ns, func(ctx context.Context) (bool, error) {
		_, err := cp.client.CoreV1().ServiceAccounts(ns).Get(ctx, "default", metav1.GetOptions{})
		return err == nil, err
	})
}

// addVolumes creates, for every claim the StatefulSets of o will make in
// ns, a PersistentVolume bound to it in advance: the disks a laptop
// cluster's provisioner would give them. Like those, they outlive the
// release (reclaim policy Retain).
func (cp *controlPlane) addVolumes(t *testing.T, ns string, o objects) {
	t.Helper()
	for _, st := range o.statefulSets {
		for _, tmpl := range st.Spec.VolumeClaimTemplates {
			for i := range int(*st.Spec.Replicas) {
				claim := fmt.Sprintf("%s-%s-%d", tmpl.Name, st.Name, i)
				pv := &corev1.PersistentVolume{
					ObjectMeta: metav1.ObjectMeta{Name: ns + "-" + claim},
					Spec: corev1.PersistentVolumeSpec{
						Capacity:                      corev1.ResourceList{corev1.ResourceStorage: tmpl.Spec.Resources.Requests[corev1.ResourceStorage]},
						AccessModes:                   tmpl.Spec.AccessModes,
						PersistentVolumeReclaimPolicy: corev1.PersistentVolumeReclaimRetain,
						ClaimRef:                      &corev1.ObjectReference{Namespace: ns, Name: claim},
						PersistentVolumeSource:        corev1.PersistentVolumeSource{HostPath: &corev1.HostPathVolumeSource{Path: "/k8s-check/" + claim}},
					},
				}
				if _, err := cp.client.CoreV1().PersistentVolumes().Create(context.Background(), pv, metav1.CreateOptions{}); err != nil {
					t.Fatalf("create volume for %s: %v", claim, err)
				}
			}
		}
	}
}

// helm is Helm's SDK acting on the control plane in ns, as the helm CLI
// would with its kubeconfig.
func (cp *controlPlane) helm(t *testing.T, ns string) *action.Configuration {
	t.Helper()
	flags := genericclioptions.NewConfigFlags(false)
	flags.KubeConfig, flags.Namespace = &cp.kubeconfig, &ns
	// Helm's progress, each message once: its --wait repeats "not ready"
	// every two seconds.
	var mu sync.Mutex
	seen := map[string]bool{}
	logf := func(format string, v ...any) {
		mu.Lock()
		defer mu.Unlock()
		if msg := fmt.Sprintf(format, v...); !seen[msg] {
			seen[msg] = true
			t.Log(msg)
		}
	}
	cfg := new(action.Configuration)
	if err := cfg.Init(flags, ns, "secret", logf); err != nil {
		t.Fatalf("helm: %v", err)
	}
	return cfg
}

// helmInstall is `helm install switchyard charts/switchyard --wait`, or
// with upgrade `helm upgrade switchyard charts/switchyard --wait`.
func (cp *controlPlane) helmInstall(t *testing.T, cfg *action.Configuration, ns string, upgrade bool) {
	t.Helper()
	ch, err := loader.Load(chartPath)
	if err != nil {
		t.Fatal(err)
	}
	if upgrade {
		up := action.NewUpgrade(cfg)
		up.Namespace, up.Wait, up.Timeout = ns, true, helmTimeout
		_, err = up.Run("switchyard", ch, nil)
	} else {
		in := action.NewInstall(cfg)
		in.ReleaseName, in.Namespace, in.Wait, in.Timeout = "switchyard", ns, true, helmTimeout
		_, err = in.Run(ch, nil)
	}
	if err != nil {
		t.Fatalf("helm (upgrade %v): %v\nwarning events in %s:\n%s", upgrade, err, ns, cp.warningEvents(ns))
	}
}

// warningEvents lists the Warning events in ns: why a pod was not created (Pod
// Security) or not scheduled (insufficient CPU or memory), for a failed
// --wait.
func (cp *controlPlane) warningEvents(ns string) string {
	events, err := cp.client.CoreV1().Events(ns).List(context.Background(), metav1.ListOptions{FieldSelector: "type=Warning"})
	if err != nil {
		return err.Error()
	}
	var b strings.Builder
	for _, e := range events.Items {
		fmt.Fprintf(&b, "%s %s: %s: %s\n", e.InvolvedObject.Kind, e.InvolvedObject.Name, e.Reason, e.Message)
	}
	return b.String()
}

// helmUninstall is `helm uninstall switchyard --wait
// --cascade=foreground`: it returns once the pods are gone too.
func helmUninstall(t *testing.T, cfg *action.Configuration) {
	t.Helper()
	un := action.NewUninstall(cfg)
	un.Wait, un.DeletionPropagation, un.Timeout = true, "foreground", helmTimeout
	if _, err := un.Run("switchyard"); err != nil {
		t.Fatalf("helm uninstall: %v", err)
	}
}

// warnings collects the API server's warnings (deprecations, Pod
// Security violations of a workload's template), which kubectl and
// Helm would print.
type warnings struct {
	mu   sync.Mutex
	list []string
}

// HandleWarningHeader implements rest.WarningHandler.
func (w *warnings) HandleWarningHeader(code int, agent, text string) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.list = append(w.list, text)
}

func (w *warnings) take() []string {
	w.mu.Lock()
	defer w.mu.Unlock()
	l := w.list
	w.list = nil
	return l
}

// checkRenderings has the API server judge every rendering the chart tests
// (renderings) in a dry run, with strict field validation: every object is
// valid and admitted without a warning, and every pod its workloads would
// create is admitted under the restricted Pod Security Standard. The
// ServiceAccounts are created for real, since a pod is admitted only once
// its ServiceAccount exists; the ServiceMonitor CRD too, from testdata/,
// and KEDA's ScaledObject CRD, from the module tools/keda pins.
func (cp *controlPlane) checkRenderings(t *testing.T) {
	const ns = "dry-run"
	cp.createNamespace(t, ns)
	ctx := context.Background()
	w := &warnings{}
	config := rest.CopyConfig(cp.config)
	config.WarningHandler = w
	dyn, err := dynamic.NewForConfig(config)
	if err != nil {
		t.Fatal(err)
	}
	client, err := kubernetes.NewForConfig(config)
	if err != nil {
		t.Fatal(err)
	}
	crds := schema.GroupVersionResource{Group: "apiextensions.k8s.io", Version: "v1", Resource: "customresourcedefinitions"}
	mapper := restmapper.NewDeferredDiscoveryRESTMapper(memory.NewMemCacheClient(client.Discovery()))
	for _, file := range []string{"testdata/servicemonitors.monitoring.coreos.com.yaml", kedaCRD(t)} {
		crd := readObject(t, file)
		if _, err := dyn.Resource(crds).Create(ctx, crd, metav1.CreateOptions{}); err != nil {
			t.Fatalf("create the CRD %s: %v", crd.GetName(), err)
		}
		group, _, _ := unstructured.NestedString(crd.Object, "spec", "group")
		kind, _, _ := unstructured.NestedString(crd.Object, "spec", "names", "kind")
		cp.poll(t, time.Minute, "the CRD "+crd.GetName()+" to be served", func(ctx context.Context) (bool, error) {
			mapper.Reset()
			_, err := mapper.RESTMapping(schema.GroupKind{Group: group, Kind: kind})
			return err == nil, err
		})
	}

	names := make([]string, 0, len(renderings))
	for name := range renderings {
		names = append(names, name)
	}
	sort.Strings(names)
	for _, name := range names {
		t.Run(name, func(t *testing.T) {
			manifest, err := render(t, renderings[name])
			if err != nil {
				t.Fatalf("render: %v", err)
			}
			for _, doc := range releaseutil.SplitManifests(manifest) {
				obj := &unstructured.Unstructured{}
				if err := yaml.Unmarshal([]byte(doc), &obj.Object); err != nil {
					t.Fatal(err)
				}
				if len(obj.Object) == 0 {
					continue
				}
				gvk := obj.GroupVersionKind()
				m, err := mapper.RESTMapping(gvk.GroupKind(), gvk.Version)
				if err != nil {
					t.Errorf("%s %s: the API server does not serve it: %v", gvk.Kind, obj.GetName(), err)
					continue
				}
				var r dynamic.ResourceInterface = dyn.Resource(m.Resource)
				if m.Scope.Name() == meta.RESTScopeNameNamespace {
					r = dyn.Resource(m.Resource).Namespace(ns)
				}
				opts := metav1.CreateOptions{DryRun: []string{metav1.DryRunAll}, FieldValidation: metav1.FieldValidationStrict}
				if gvk.Kind == "ServiceAccount" {
					opts.DryRun = nil
				}
				if _, err := r.Create(ctx, obj, opts); err != nil && (opts.DryRun != nil || !apierrors.IsAlreadyExists(err)) {
					t.Errorf("%s %s: %v", gvk.Kind, obj.GetName(), err)
				}
				for _, warning := range w.take() {
					t.Errorf("%s %s: warning: %s", gvk.Kind, obj.GetName(), warning)
				}
			}
			for _, pod := range controllerPods(decode(t, manifest)) {
				if _, err := client.CoreV1().Pods(ns).Create(ctx, pod, metav1.CreateOptions{DryRun: []string{metav1.DryRunAll}}); err != nil {
					t.Errorf("pod %s: %v", pod.Name, err)
				}
				for _, warning := range w.take() {
					t.Errorf("pod %s: warning: %s", pod.Name, warning)
				}
			}
		})
	}
}

// controllerPods returns a pod of each workload of o as its controller
// would create it: a Deployment's from its template; a StatefulSet's first
// one, <name>-0, with a volume for each of its claims, which the
// StatefulSet controller adds.
func controllerPods(o objects) []*corev1.Pod {
	var pods []*corev1.Pod
	for _, d := range o.deployments {
		pods = append(pods, &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: d.Name, Labels: d.Spec.Template.Labels}, Spec: d.Spec.Template.Spec})
	}
	for _, st := range o.statefulSets {
		pod := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: st.Name + "-0", Labels: st.Spec.Template.Labels}, Spec: *st.Spec.Template.Spec.DeepCopy()}
		for _, c := range st.Spec.VolumeClaimTemplates {
			pod.Spec.Volumes = append(pod.Spec.Volumes, corev1.Volume{Name: c.Name, VolumeSource: corev1.VolumeSource{
				PersistentVolumeClaim: &corev1.PersistentVolumeClaimVolumeSource{ClaimName: c.Name + "-" + pod.Name},
			}})
		}
		pods = append(pods, pod)
	}
	return pods
}

// readObject reads a YAML file holding one object.
func readObject(t *testing.T, path string) *unstructured.Unstructured {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	obj := &unstructured.Unstructured{}
	if err := yaml.Unmarshal(b, &obj.Object); err != nil {
		t.Fatalf("%s: %v", path, err)
	}
	return obj
}

// checkPodsOnNode checks that every pod of the release runs, Ready, on
// the node, which never went NotReady, and logs what their requests take
// of it.
func (cp *controlPlane) checkPodsOnNode(t *testing.T, ns, node string) {
	t.Helper()
	ctx := context.Background()
	// A node whose kwok stopped renewing its lease goes NotReady and takes
	// its pods' readiness with it, which Helm's --wait may or may not see.
	notReady, err := cp.client.CoreV1().Events(ns).List(ctx, metav1.ListOptions{FieldSelector: "reason=NodeNotReady"})
	if err != nil {
		t.Fatal(err)
	}
	if len(notReady.Items) > 0 {
		t.Errorf("node %s went NotReady: %s", node, notReady.Items[0].Message)
	}
	pods, err := cp.client.CoreV1().Pods(ns).List(ctx, metav1.ListOptions{LabelSelector: "app.kubernetes.io/instance=switchyard"})
	if err != nil {
		t.Fatal(err)
	}
	var cpu, memory resource.Quantity
	for _, p := range pods.Items {
		ready := false
		for _, c := range p.Status.Conditions {
			ready = ready || c.Type == corev1.PodReady && c.Status == corev1.ConditionTrue
		}
		if p.Spec.NodeName != node || !ready {
			t.Errorf("pod %s: node %q, ready %v", p.Name, p.Spec.NodeName, ready)
		}
		for _, c := range p.Spec.Containers {
			cpu.Add(c.Resources.Requests[corev1.ResourceCPU])
			memory.Add(c.Resources.Requests[corev1.ResourceMemory])
		}
	}
	n, err := cp.client.CoreV1().Nodes().Get(ctx, node, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("%d pods on node %s request %s CPU of %s and %s of %s memory", len(pods.Items), node,
		cpu.String(), n.Status.Allocatable.Cpu(), memory.String(), n.Status.Allocatable.Memory())
}

// dbPasswords returns the chart's database passwords as the API server
// holds them, by role ("admin" and the services).
func dbPasswords(t *testing.T, cs kubernetes.Interface, ns string) map[string]string {
	t.Helper()
	m := map[string]string{}
	for _, role := range append([]string{"admin"}, serviceNames...) {
		s, err := cs.CoreV1().Secrets(ns).Get(context.Background(), "switchyard-postgres-"+role, metav1.GetOptions{})
		if err != nil {
			t.Fatalf("the %s password: %v", role, err)
		}
		m[role] = string(s.Data["password"])
	}
	return m
}

// runRolesContainer does what the PostgreSQL pod's roles container does
// when it starts or its Secrets change, with what the API server holds: it
// runs reconcile-roles.sh from the ConfigMap the StatefulSet mounts, with
// the passwords of the Secrets its projected volume names, at the paths
// the kubelet would mount them, against db, the server whose data the
// kept volume holds.
func runRolesContainer(t *testing.T, cs kubernetes.Interface, ns string, db rolesServer) {
	t.Helper()
	ctx := context.Background()
	st, err := cs.AppsV1().StatefulSets(ns).Get(ctx, "switchyard-postgres", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	spec := st.Spec.Template.Spec
	roles := container(t, spec, "roles")
	volumes := map[string]corev1.Volume{}
	for _, v := range spec.Volumes {
		volumes[v.Name] = v
	}
	mounts := map[string]corev1.Volume{} // by mount path
	for _, m := range roles.VolumeMounts {
		mounts[m.MountPath] = volumes[m.Name]
	}
	// The container runs watch-roles.sh, which runs reconcile-roles.sh
	// from the same directory.
	if len(roles.Command) != 2 {
		t.Fatalf("roles container command %v: want bash and a script", roles.Command)
	}
	scripts := mounts[filepath.Dir(roles.Command[1])].ConfigMap
	if scripts == nil {
		t.Fatalf("no ConfigMap mounted where %s is", roles.Command[1])
	}
	cm, err := cs.CoreV1().ConfigMaps(ns).Get(ctx, scripts.Name, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	secrets := mounts[envOf(roles)["SWITCHYARD_SECRETS_DIR"].Value].Projected
	if secrets == nil {
		t.Fatal("no projected volume mounted at SWITCHYARD_SECRETS_DIR")
	}
	passwords := map[string]string{}
	for _, src := range secrets.Sources {
		if src.Secret == nil {
			continue
		}
		s, err := cs.CoreV1().Secrets(ns).Get(ctx, src.Secret.Name, metav1.GetOptions{})
		if err != nil {
			t.Fatalf("the roles container's Secret: %v", err)
		}
		for _, item := range src.Secret.Items {
			role, file, _ := strings.Cut(item.Path, "/")
			if file != "password" {
				t.Fatalf("Secret %s projected to %s, not <role>/password", s.Name, item.Path)
			}
			passwords[role] = string(s.Data[item.Key])
		}
	}
	if err := db.runScript(t, cm.Data["reconcile-roles.sh"], passwords); err != nil {
		t.Fatalf("reconcile-roles.sh: %v", err)
	}
}

// checkServiceLogins checks that each service's pods log in to their own
// database on db with the credentials the kubelet would give them from
// what the API server holds (the URL's user and database, PGPASSWORD from
// its Secret), and that none logs in with its stale password, if any. It
// returns each service's password.
func checkServiceLogins(t *testing.T, cs kubernetes.Interface, ns string, db rolesServer, stale map[string]string) map[string]string {
	t.Helper()
	ctx := context.Background()
	pods, err := cs.CoreV1().Pods(ns).List(ctx, metav1.ListOptions{LabelSelector: "app.kubernetes.io/instance=switchyard"})
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]string{}
	for _, p := range pods.Items {
		if p.DeletionTimestamp != nil {
			continue
		}
		for _, c := range p.Spec.Containers {
			env := envOf(c)
			dbURL, ok := env["SWITCHYARD_DATABASE_URL"]
			if !ok {
				continue
			}
			u, err := url.Parse(dbURL.Value)
			if err != nil {
				t.Fatalf("pod %s: %v", p.Name, err)
			}
			if _, err := cs.CoreV1().Services(ns).Get(ctx, u.Hostname(), metav1.GetOptions{}); err != nil {
				t.Errorf("pod %s: database host %s: %v", p.Name, u.Hostname(), err)
			}
			ref := env["PGPASSWORD"].ValueFrom
			if ref == nil || ref.SecretKeyRef == nil {
				t.Fatalf("pod %s: PGPASSWORD is not from a Secret", p.Name)
			}
			s, err := cs.CoreV1().Secrets(ns).Get(ctx, ref.SecretKeyRef.Name, metav1.GetOptions{})
			if err != nil {
				t.Fatalf("pod %s: %v", p.Name, err)
			}
			user, database, password := u.User.Username(), strings.TrimPrefix(u.Path, "/"), string(s.Data[ref.SecretKeyRef.Key])
			if err := db.login(user, database, password); err != nil {
				t.Errorf("pod %s cannot log in as %s to %s: %v", p.Name, user, database, err)
			}
			if old, ok := stale[user]; ok {
				if err := db.login(user, database, old); err == nil {
					t.Errorf("%s still logs in with its old password", user)
				}
			}
			got[user] = password
		}
	}
	for _, n := range serviceNames {
		if _, ok := got[n]; !ok {
			t.Errorf("no pod of %s", n)
		}
	}
	return got
}

// generations returns the generation of every workload in ns: an upgrade
// that changes none restarts no pod.
func generations(t *testing.T, cs kubernetes.Interface, ns string) map[string]int64 {
	t.Helper()
	ctx := context.Background()
	m := map[string]int64{}
	deployments, err := cs.AppsV1().Deployments(ns).List(ctx, metav1.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	for _, d := range deployments.Items {
		m["Deployment "+d.Name] = d.Generation
	}
	sets, err := cs.AppsV1().StatefulSets(ns).List(ctx, metav1.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range sets.Items {
		m["StatefulSet "+s.Name] = s.Generation
	}
	return m
}

// claims returns the UID of every PersistentVolumeClaim in ns that is
// bound.
func claims(t *testing.T, cs kubernetes.Interface, ns string) map[string]types.UID {
	t.Helper()
	list, err := cs.CoreV1().PersistentVolumeClaims(ns).List(context.Background(), metav1.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	m := map[string]types.UID{}
	for _, c := range list.Items {
		if c.Status.Phase == corev1.ClaimBound {
			m[c.Name] = c.UID
		}
	}
	return m
}

// The chart's lifecycle on a real control plane: every rendering passes
// the API server and the restricted Pod Security Standard; `helm install
// --wait` succeeds on one 2-CPU, 4-GiB node (the requests fit, every
// workload's pods are created, scheduled and Ready); the services' database
// credentials log in once the roles container has run; `helm upgrade`
// keeps the passwords (lookup against a real server) and restarts nothing;
// `helm uninstall` keeps the password Secrets and the volumes; a reinstall
// finds the same passwords; and a reinstall after the Secrets were deleted
// generates new ones, which the roles container makes work on the kept
// data while the old ones stop working.
func TestControlPlane(t *testing.T) {
	cp := startControlPlane(t, controlPlaneDir(t))
	cp.addNode(t, laptop, "2", "4Gi")
	if !t.Run("every rendering passes the API server and restricted", cp.checkRenderings) {
		return
	}

	const ns = "shop" // render's namespace, so its StatefulSets name the claims
	cp.createNamespace(t, ns)
	cp.addVolumes(t, ns, mustRender(t, nil))
	db := startRolesServer(t)
	cfg := cp.helm(t, ns)
	var first map[string]string
	var volumes map[string]types.UID
	for _, step := range []struct {
		name string
		run  func(t *testing.T)
	}{
		{"install", func(t *testing.T) {
			cp.helmInstall(t, cfg, ns, false)
			cp.checkPodsOnNode(t, ns, laptop)
			volumes = claims(t, cp.client, ns)
			if len(volumes) != len(mustRender(t, nil).statefulSets) {
				t.Errorf("bound claims %v, want one per StatefulSet", volumes)
			}
			first = dbPasswords(t, cp.client, ns)
			runRolesContainer(t, cp.client, ns, db)
			checkServiceLogins(t, cp.client, ns, db, nil)
		}},
		{"upgrade keeps the passwords and restarts nothing", func(t *testing.T) {
			before := generations(t, cp.client, ns)
			cp.helmInstall(t, cfg, ns, true)
			if got := dbPasswords(t, cp.client, ns); fmt.Sprint(got) != fmt.Sprint(first) {
				t.Errorf("the upgrade changed the passwords")
			}
			if after := generations(t, cp.client, ns); fmt.Sprint(after) != fmt.Sprint(before) {
				t.Errorf("the upgrade changed workloads: before %v, after %v", before, after)
			}
		}},
		{"uninstall keeps the password Secrets and the volumes", func(t *testing.T) {
			helmUninstall(t, cfg)
			if got := dbPasswords(t, cp.client, ns); fmt.Sprint(got) != fmt.Sprint(first) {
				t.Errorf("the passwords changed")
			}
			if got := claims(t, cp.client, ns); fmt.Sprint(got) != fmt.Sprint(volumes) {
				t.Errorf("bound claims %v, want %v", got, volumes)
			}
			pods, err := cp.client.CoreV1().Pods(ns).List(context.Background(), metav1.ListOptions{})
			if err != nil || len(pods.Items) != 0 {
				t.Errorf("pods left after uninstall: %v %v", pods, err)
			}
		}},
		{"reinstall finds the passwords", func(t *testing.T) {
			cp.helmInstall(t, cfg, ns, false)
			if got := dbPasswords(t, cp.client, ns); fmt.Sprint(got) != fmt.Sprint(first) {
				t.Errorf("the reinstall changed the passwords")
			}
			runRolesContainer(t, cp.client, ns, db)
			checkServiceLogins(t, cp.client, ns, db, nil)
		}},
		{"reinstall after the Secrets were deleted moves the passwords", func(t *testing.T) {
			helmUninstall(t, cfg)
			for role := range first {
				if err := cp.client.CoreV1().Secrets(ns).Delete(context.Background(), "switchyard-postgres-"+role, metav1.DeleteOptions{}); err != nil {
					t.Fatal(err)
				}
			}
			cp.helmInstall(t, cfg, ns, false)
			cp.checkPodsOnNode(t, ns, laptop)
			if got := claims(t, cp.client, ns); fmt.Sprint(got) != fmt.Sprint(volumes) {
				t.Errorf("bound claims %v, want the kept ones %v", got, volumes)
			}
			second := dbPasswords(t, cp.client, ns)
			for role, pw := range second {
				if pw == first[role] {
					t.Errorf("%s: the reinstall kept a deleted password", role)
				}
			}
			runRolesContainer(t, cp.client, ns, db)
			checkServiceLogins(t, cp.client, ns, db, first)
			if err := db.login("postgres", "postgres", second["admin"]); err != nil {
				t.Errorf("the superuser's password is not its new Secret's: %v", err)
			}
			if err := db.login("postgres", "postgres", first["admin"]); err == nil {
				t.Errorf("the superuser still logs in with its old password")
			}
		}},
	} {
		if !t.Run(step.name, step.run) {
			return
		}
	}
}

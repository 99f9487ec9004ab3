package deploy

// What the chart must survive after its first install: a reinstall onto
// kept volumes, renderings without lookup, real disks, slow starts,
// scale-out, and the memory limits it sets itself.

import (
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"testing"

	"github.com/confluentinc/confluent-kafka-go/v2/kafka"
	"helm.sh/helm/v3/pkg/chart/loader"
	"helm.sh/helm/v3/pkg/chartutil"
	"helm.sh/helm/v3/pkg/engine"
	"helm.sh/helm/v3/pkg/releaseutil"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/dynamic"
	dynamicfake "k8s.io/client-go/dynamic/fake"
	"sigs.k8s.io/yaml"

	"github.com/switchyard/switchyard/platform/broker"
)

// fakeCluster answers the chart's lookup calls from objs, as the API server
// of an existing release would.
type fakeCluster struct {
	client *dynamicfake.FakeDynamicClient
}

func newFakeCluster(t *testing.T, objs ...runtime.Object) fakeCluster {
	t.Helper()
	scheme := runtime.NewScheme()
	if err := corev1.AddToScheme(scheme); err != nil {
		t.Fatal(err)
	}
	if err := appsv1.AddToScheme(scheme); err != nil {
		t.Fatal(err)
	}
	return fakeCluster{dynamicfake.NewSimpleDynamicClient(scheme, objs...)}
}

// GetClientFor implements engine.ClientProvider for the kinds the chart
// looks up.
func (c fakeCluster) GetClientFor(apiVersion, kind string) (dynamic.NamespaceableResourceInterface, bool, error) {
	switch apiVersion + "/" + kind {
	case "v1/Secret":
		return c.client.Resource(corev1.SchemeGroupVersion.WithResource("secrets")), true, nil
	case "apps/v1/StatefulSet":
		return c.client.Resource(appsv1.SchemeGroupVersion.WithResource("statefulsets")), true, nil
	}
	return nil, false, fmt.Errorf("the fake cluster does not serve %s %s", apiVersion, kind)
}

// renderUpgrade renders the chart as `helm upgrade` does against a cluster
// holding objs: schema-checked values, lookup answered by the cluster.
func renderUpgrade(t *testing.T, values map[string]any, objs ...runtime.Object) (string, error) {
	t.Helper()
	ch, err := loader.Load(chartPath)
	if err != nil {
		t.Fatal(err)
	}
	caps := chartutil.DefaultCapabilities.Copy()
	kv, err := chartutil.ParseKubeVersion("v1.31.0")
	if err != nil {
		t.Fatal(err)
	}
	caps.KubeVersion = *kv
	vals, err := chartutil.ToRenderValuesWithSchemaValidation(ch, values,
		chartutil.ReleaseOptions{Name: "switchyard", Namespace: "shop", Revision: 2, IsUpgrade: true}, caps, false)
	if err != nil {
		return "", err
	}
	files, err := engine.RenderWithClientProvider(ch, vals, newFakeCluster(t, objs...))
	if err != nil {
		return "", err
	}
	names := make([]string, 0, len(files))
	for name := range files {
		names = append(names, name)
	}
	sort.Strings(names)
	var docs []string
	for _, name := range names {
		if strings.HasSuffix(name, "NOTES.txt") {
			continue
		}
		for _, doc := range releaseutil.SplitManifests(files[name]) {
			var meta struct {
				Kind string `json:"kind"`
			}
			if err := yaml.Unmarshal([]byte(doc), &meta); err == nil && meta.Kind != "" {
				docs = append(docs, doc)
			}
		}
	}
	return strings.Join(docs, "\n---\n"), nil
}

func mustRender(t *testing.T, values map[string]any) objects {
	t.Helper()
	manifest, err := render(t, values)
	if err != nil {
		t.Fatalf("render: %v", err)
	}
	return decode(t, manifest)
}

func container(t *testing.T, spec corev1.PodSpec, name string) corev1.Container {
	t.Helper()
	for _, c := range spec.Containers {
		if c.Name == name {
			return c
		}
	}
	t.Fatalf("no container %q", name)
	return corev1.Container{}
}

func statefulSet(t *testing.T, o objects, suffix string) appsv1.StatefulSet {
	t.Helper()
	for _, s := range o.statefulSets {
		if strings.HasSuffix(s.Name, suffix) {
			return s
		}
	}
	t.Fatalf("no StatefulSet *%s", suffix)
	return appsv1.StatefulSet{}
}

func envOf(c corev1.Container) map[string]corev1.EnvVar {
	env := map[string]corev1.EnvVar{}
	for _, e := range c.Env {
		env[e.Name] = e
	}
	return env
}

// Every StatefulSet's serviceName is a headless Service (the governing
// Service of its pods' DNS names), in every rendering.
func TestStatefulSetsNameHeadlessServices(t *testing.T) {
	for name, values := range renderings {
		o := mustRender(t, values)
		for _, st := range o.statefulSets {
			headless := false
			for _, s := range o.services {
				if s.Name == st.Spec.ServiceName && s.Spec.ClusterIP == corev1.ClusterIPNone {
					headless = true
				}
			}
			if !headless {
				t.Errorf("%s: StatefulSet %s's serviceName %q is not a headless Service", name, st.Name, st.Spec.ServiceName)
			}
		}
	}
}

// No pod gets Service-link variables: the Kafka image reads every KAFKA_*
// variable and the PostgreSQL image POSTGRES_* ones as configuration, and a
// Service named kafka or postgres in the namespace would inject some.
func TestPodsHaveNoServiceLinks(t *testing.T) {
	for name, values := range renderings {
		for _, p := range mustRender(t, values).pods() {
			if p.spec.EnableServiceLinks == nil || *p.spec.EnableServiceLinks {
				t.Errorf("%s: %s %s does not set enableServiceLinks: false", name, p.kind, p.name)
			}
		}
	}
}

// Kafka's log directory is below its volume's mount point, never the mount
// root, where ext4 and xfs put lost+found (which Kafka refuses as a
// partition directory).
func TestKafkaLogDirIsBelowTheMount(t *testing.T) {
	st := statefulSet(t, mustRender(t, nil), "-kafka")
	c := container(t, st.Spec.Template.Spec, "kafka")
	dirs := envOf(c)["KAFKA_LOG_DIRS"].Value
	if dirs == "" {
		t.Fatal("KAFKA_LOG_DIRS not set")
	}
	for _, dir := range strings.Split(dirs, ",") {
		dir = strings.TrimSuffix(dir, "/")
		below := false
		for _, m := range c.VolumeMounts {
			if m.Name == "data" {
				if dir == strings.TrimSuffix(m.MountPath, "/") {
					t.Errorf("log dir %s is the root of volume %s", dir, m.Name)
				}
				below = below || strings.HasPrefix(dir, strings.TrimSuffix(m.MountPath, "/")+"/")
			}
		}
		if !below {
			t.Errorf("log dir %s is not on the data volume", dir)
		}
	}
}

// Kafka and PostgreSQL have startup probes that give a slow start minutes
// (Kafka's cold start runs two JVMs; PostgreSQL's crash recovery replays
// the WAL, and a liveness restart would begin it again), checking what
// liveness checks, while liveness then reacts within a minute.
func TestStartupProbesCoverSlowStarts(t *testing.T) {
	for _, c := range []struct {
		name     string
		workload string // the StatefulSet's suffix and container
		values   map[string]any
		atLeast  int32
	}{
		{"kafka defaults", "kafka", nil, 180},
		{"kafka, slower laptop", "kafka", map[string]any{"kafka": map[string]any{"enabled": true, "startupSeconds": 600}}, 600},
		{"postgres defaults", "postgres", nil, 600},
		{"postgres, long recovery", "postgres", map[string]any{"postgresql": map[string]any{"enabled": true, "startupSeconds": 1800}}, 1800},
	} {
		st := statefulSet(t, mustRender(t, c.values), "-"+c.workload)
		k := container(t, st.Spec.Template.Spec, c.workload)
		p, l := k.StartupProbe, k.LivenessProbe
		if p == nil || l == nil {
			t.Errorf("%s: startup probe %v, liveness probe %v", c.name, p, l)
			continue
		}
		if got := p.PeriodSeconds * p.FailureThreshold; got < c.atLeast {
			t.Errorf("%s: the startup probe allows %ds, want at least %ds", c.name, got, c.atLeast)
		}
		if !reflect.DeepEqual(p.ProbeHandler, l.ProbeHandler) {
			t.Errorf("%s: the startup probe checks %+v, liveness %+v: liveness could fail at once after start-up", c.name, p.ProbeHandler, l.ProbeHandler)
		}
		if l.InitialDelaySeconds+l.PeriodSeconds*max(l.FailureThreshold, 3) > 60 {
			t.Errorf("%s: liveness should react within a minute once started: %+v", c.name, l)
		}
	}
	// Kafka's probes wait for the broker's port.
	k := container(t, statefulSet(t, mustRender(t, nil), "-kafka").Spec.Template.Spec, "kafka")
	if p := k.StartupProbe; p.TCPSocket == nil || p.TCPSocket.Port.String() != "kafka" {
		t.Errorf("Kafka's startup probe does not wait for the broker's port")
	}
}

// PostgreSQL's write-ahead log stays within half of its volume: a quarter
// for what checkpoints keep (max_wal_size) and a quarter for what
// replication slots may hold back (max_slot_wal_keep_size). Without the
// latter, one emitting service scaled to 0 (its slot unread) would fill the
// volume and stop every service's database.
func TestPostgresWALFitsItsVolume(t *testing.T) {
	for _, c := range []struct {
		storage string
		mib     int64
	}{
		{"", 2048}, // the default
		{"10Gi", 10240},
	} {
		values := map[string]any(nil)
		if c.storage != "" {
			values = map[string]any{"postgresql": map[string]any{"enabled": true, "storage": c.storage}}
		}
		settings := postgresSettings(t, mustRender(t, values))
		mb := func(name string) int64 {
			m := regexp.MustCompile(`^([0-9]+)MB$`).FindStringSubmatch(settings[name])
			if m == nil {
				t.Fatalf("%s=%q, want <n>MB", name, settings[name])
			}
			n, _ := strconv.ParseInt(m[1], 10, 64)
			return n
		}
		keep, wal := mb("max_slot_wal_keep_size"), mb("max_wal_size")
		if keep <= 0 || keep+wal > c.mib/2 {
			t.Errorf("%d MiB volume: max_slot_wal_keep_size %d MB + max_wal_size %d MB, want a positive cap and both within half the volume", c.mib, keep, wal)
		}
		if keep < c.mib/8 {
			t.Errorf("%d MiB volume: max_slot_wal_keep_size %d MB lets a short relay outage lose its slot", c.mib, keep)
		}
	}
}

// mebibytes reads a container's memory limit.
func mebibytes(t *testing.T, c corev1.Container) int64 {
	t.Helper()
	q, ok := c.Resources.Limits[corev1.ResourceMemory]
	if !ok {
		t.Fatalf("container %s has no memory limit", c.Name)
	}
	return q.Value() >> 20
}

// Jaeger's in-memory store is bounded to what its memory limit holds, with
// a memory limiter and GOMEMLIMIT below the limit; the chart refuses a
// store that cannot fit.
func TestJaegerStoreFitsItsLimit(t *testing.T) {
	// What a shop trace takes in Jaeger's memory store: an order's trace
	// has a few hundred spans (six services, a span per query) of well
	// under 1 KiB each.
	const traceKiB = 128
	for _, c := range []struct {
		name   string
		values map[string]any
	}{
		{"defaults", nil},
		{"bigger limit", map[string]any{"jaeger": map[string]any{"enabled": true, "maxTraces": 6000, "resources": map[string]any{"limits": map[string]any{"memory": "2Gi"}}}}},
	} {
		o := mustRender(t, c.values)
		var jaeger appsv1.Deployment
		for _, d := range o.deployments {
			if strings.HasSuffix(d.Name, "-jaeger") {
				jaeger = d
			}
		}
		j := container(t, jaeger.Spec.Template.Spec, "jaeger")
		limit := mebibytes(t, j)
		var configMap string
		for _, v := range jaeger.Spec.Template.Spec.Volumes {
			if v.ConfigMap != nil {
				configMap = v.ConfigMap.Name
			}
		}
		if !strings.Contains(strings.Join(j.Args, " "), "--config=/etc/jaeger/config.yaml") {
			t.Fatalf("%s: Jaeger runs its built-in configuration (100,000 traces): args %v", c.name, j.Args)
		}
		var cfg struct {
			Service struct {
				Pipelines map[string]struct {
					Receivers  []string `json:"receivers"`
					Processors []string `json:"processors"`
				} `json:"pipelines"`
			} `json:"service"`
			Extensions struct {
				Storage struct {
					Backends map[string]struct {
						Memory struct {
							MaxTraces int64 `json:"max_traces"`
						} `json:"memory"`
					} `json:"backends"`
				} `json:"jaeger_storage"`
			} `json:"extensions"`
			Processors struct {
				MemoryLimiter struct {
					LimitMiB int64 `json:"limit_mib"`
				} `json:"memory_limiter"`
			} `json:"processors"`
		}
		if err := yaml.Unmarshal([]byte(o.configMaps[configMap].Data["config.yaml"]), &cfg); err != nil {
			t.Fatalf("%s: Jaeger's config.yaml: %v", c.name, err)
		}
		if len(cfg.Extensions.Storage.Backends) != 1 {
			t.Fatalf("%s: want one storage backend, got %+v", c.name, cfg.Extensions.Storage.Backends)
		}
		for _, b := range cfg.Extensions.Storage.Backends {
			if b.Memory.MaxTraces <= 0 || b.Memory.MaxTraces*traceKiB/1024 > limit*6/10 {
				t.Errorf("%s: max_traces %d x %d KiB does not fit 60%% of the %d MiB limit", c.name, b.Memory.MaxTraces, traceKiB, limit)
			}
		}
		if l := cfg.Processors.MemoryLimiter.LimitMiB; l <= 0 || l >= limit || !strings.HasPrefix(strings.Join(cfg.Service.Pipelines["traces"].Processors, ","), "memory_limiter") {
			t.Errorf("%s: the traces pipeline does not start with a memory limiter below the %d MiB limit (limit_mib %d)", c.name, limit, l)
		}
		gomem := envOf(j)["GOMEMLIMIT"].Value
		if q, err := resource.ParseQuantity(strings.TrimSuffix(gomem, "B")); err != nil || q.Value()>>20 >= limit {
			t.Errorf("%s: GOMEMLIMIT %q is not below the %d MiB limit", c.name, gomem, limit)
		}
	}
	if _, err := render(t, map[string]any{"jaeger": map[string]any{"enabled": true, "maxTraces": 100000}}); err == nil {
		t.Error("the chart rendered Jaeger keeping 100,000 traces in 512 MiB")
	}
}

// A service's memory limit covers the Kafka client's buffers as the
// platform bounds them plus room for the Go heap: the relay's producer
// (services that emit events) and, per consumer group, its prefetch queue,
// a fetch response and its dead-letter producer. The groups are counted
// from the service's source: its own, plus one per AddConsumer or
// NewConsumer call (inventory's stock cache updater, analytics' replay
// during a rebuild).
func TestServiceMemoryCoversKafkaBuffers(t *testing.T) {
	const heapMiB = 128
	kib := func(m kafka.ConfigMap, key string, librdkafkaDefault int) int {
		if v, ok := m[key].(int); ok {
			return v
		}
		return librdkafkaDefault
	}
	pc := *broker.Config{}.ProducerConfig("x")
	cc := *broker.Config{}.ConsumerConfig("g", "x")
	producerMiB := kib(pc, "queue.buffering.max.kbytes", 1048576) / 1024
	groupMiB := (kib(cc, "queued.max.messages.kbytes", 65536)+kib(cc, "fetch.max.bytes", 52428800)/1024)/1024 + producerMiB
	extraGroups := regexp.MustCompile(`(\.(?:AddConsumer|NewConsumer))\(`)
	emits := regexp.MustCompile(`(Emits:\s*true)`)
	o := mustRender(t, nil)
	for _, n := range serviceNames {
		src := filepath.Join("../services", n)
		groups := 1 + len(sourceMatchList(t, extraGroups, src))
		buffersMiB := groups * groupMiB
		if len(sourceMatchList(t, emits, src)) > 0 {
			buffersMiB += producerMiB
		}
		c := deployment(t, o, n).Spec.Template.Spec.Containers[0]
		if limit := mebibytes(t, c); limit < int64(buffersMiB+heapMiB) {
			t.Errorf("%s: memory limit %d MiB, but the Kafka client may buffer %d MiB (%d consumer groups) plus %d MiB of heap", n, limit, buffersMiB, groups, heapMiB)
		}
	}
}

var settingRE = regexp.MustCompile(`^([a-z_]+)=(.*)$`)

// postgresSettings returns the -c settings of the PostgreSQL container.
func postgresSettings(t *testing.T, o objects) map[string]string {
	t.Helper()
	c := container(t, statefulSet(t, o, "-postgres").Spec.Template.Spec, "postgres")
	m := map[string]string{}
	for i, a := range c.Args {
		if a == "-c" && i+1 < len(c.Args) {
			if kv := settingRE.FindStringSubmatch(c.Args[i+1]); kv != nil {
				m[kv[1]] = kv[2]
			}
		}
	}
	return m
}

// connectionNeed is what o's service pods may open to PostgreSQL at most,
// as each is told by SWITCHYARD_DATABASE_MAX_CONNS and
// SWITCHYARD_WATCH_DB_CONNS, plus the watch LISTEN connection, the relay's
// two and 10 reserved; and how many service pods (relays) there may be.
// An autoscaled Deployment counts with its autoscaler's maximum.
func connectionNeed(t *testing.T, o objects) (need, pods int) {
	t.Helper()
	const reserved = 10
	need = reserved
	for _, d := range o.deployments {
		if strings.HasSuffix(d.Name, "-jaeger") {
			continue
		}
		perPod := 4 // the watch LISTEN connection, the readiness probe's, the relay's two
		for _, name := range []string{"SWITCHYARD_DATABASE_MAX_CONNS", "SWITCHYARD_WATCH_DB_CONNS"} {
			v, ok := envOf(d.Spec.Template.Spec.Containers[0])[name]
			if !ok {
				t.Errorf("%s has no %s: its pool size is not budgeted", d.Name, name)
				continue
			}
			n, err := strconv.Atoi(v.Value)
			if err != nil || n < 1 {
				t.Errorf("%s: %s=%q", d.Name, name, v.Value)
			}
			perPod += n
		}
		replicas := o.scaledReplicas(t, d)
		need += replicas * perPod
		pods += replicas
	}
	return need, pods
}

// PostgreSQL's max_connections covers every pod's pools (as the pod is told
// by SWITCHYARD_DATABASE_MAX_CONNS and SWITCHYARD_WATCH_DB_CONNS) plus the
// watch LISTEN connection, the readiness probe's connection and its relay's
// 2 connections plus reserved ones, max_wal_senders covers a relay per pod, and the chart
// refuses a max_connections that cannot fit.
func TestPostgresConnectionBudget(t *testing.T) {
	for _, c := range []struct {
		name   string
		values map[string]any
	}{
		{"defaults", nil},
		{"replicas 3", map[string]any{"services": replicas(3)}},
		{"replicas 3, pools 20 and 8", map[string]any{"services": replicas(3), "service": map[string]any{"port": 50051, "metricsPort": 9090, "database": map[string]any{"maxConns": 20, "watchConns": 8}}}},
		{"set by hand", map[string]any{"postgresql": map[string]any{"enabled": true, "maxConnections": 200}}},
		{"analytics autoscaled to 6", analyticsValues(map[string]any{"maxReplicas": 6})},
		{"analytics on KEDA up to 6", analyticsValues(map[string]any{"maxReplicas": 6, "keda": map[string]any{"enabled": true}})},
	} {
		o := mustRender(t, c.values)
		need, pods := connectionNeed(t, o)
		s := postgresSettings(t, o)
		maxConns, err := strconv.Atoi(s["max_connections"])
		if err != nil || maxConns < need {
			t.Errorf("%s: max_connections %q, the services need %d", c.name, s["max_connections"], need)
		}
		if senders, err := strconv.Atoi(s["max_wal_senders"]); err != nil || senders < pods {
			t.Errorf("%s: max_wal_senders %q for %d relays", c.name, s["max_wal_senders"], pods)
		}
	}
	for name, values := range map[string]map[string]any{
		"too few connections": {"services": replicas(3), "postgresql": map[string]any{"enabled": true, "maxConnections": 100}},
		"pool of 0":           {"service": map[string]any{"port": 50051, "metricsPort": 9090, "database": map[string]any{"maxConns": 0, "watchConns": 4}}},
		// Enough for one analytics pod, not for the three its HPA may run.
		"too few for analytics' maxReplicas": {"postgresql": map[string]any{"enabled": true, "maxConnections": 120}},
	} {
		if _, err := render(t, values); err == nil {
			t.Errorf("%s: the chart rendered", name)
		}
	}
}

func storageSet(name, size string) *appsv1.StatefulSet {
	return &appsv1.StatefulSet{
		TypeMeta:   metav1.TypeMeta{APIVersion: "apps/v1", Kind: "StatefulSet"},
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: "shop"},
		Spec: appsv1.StatefulSetSpec{VolumeClaimTemplates: []corev1.PersistentVolumeClaim{{
			ObjectMeta: metav1.ObjectMeta{Name: "data"},
			Spec: corev1.PersistentVolumeClaimSpec{Resources: corev1.VolumeResourceRequirements{
				Requests: corev1.ResourceList{corev1.ResourceStorage: resource.MustParse(size)},
			}},
		}}},
	}
}

// A StatefulSet's volume size cannot change after install: the chart says
// so, naming the value and what to do, instead of letting Kubernetes refuse
// the upgrade; the unchanged size upgrades.
func TestStorageChangeIsRefusedOnUpgrade(t *testing.T) {
	existing := []runtime.Object{storageSet("switchyard-postgres", "2Gi"), storageSet("switchyard-kafka", "2Gi"), storageSet("switchyard-redis", "1Gi")}
	for _, c := range []struct {
		name   string
		values map[string]any
		key    string // "" when the upgrade must render
	}{
		{"unchanged", nil, ""},
		{"postgres grown", map[string]any{"postgresql": map[string]any{"enabled": true, "storage": "5Gi"}}, "postgresql.storage"},
		{"kafka grown", map[string]any{"kafka": map[string]any{"enabled": true, "storage": "10Gi"}}, "kafka.storage"},
		{"redis grown", map[string]any{"transport": "redis", "redis": map[string]any{"enabled": true, "storage": "2Gi"}}, "redis.storage"},
	} {
		_, err := renderUpgrade(t, c.values, existing...)
		switch {
		case c.key == "" && err != nil:
			t.Errorf("%s: %v", c.name, err)
		case c.key != "" && err == nil:
			t.Errorf("%s: the upgrade rendered; Kubernetes would refuse it", c.name)
		case c.key != "" && !strings.Contains(err.Error(), c.key+" cannot change after install"):
			t.Errorf("%s: the error does not say what cannot change: %v", c.name, err)
		}
	}
}

// passwordChecksum is the checksum/db-password annotation of a password:
// the chart hashes its base64 form, as the Secret's data holds it.
func passwordChecksum(password []byte) string {
	sum := sha256.Sum256([]byte(base64.StdEncoding.EncodeToString(password)))
	return hex.EncodeToString(sum[:])[:16]
}

func passwordSecret(name, password string) *corev1.Secret {
	return &corev1.Secret{
		TypeMeta:   metav1.TypeMeta{APIVersion: "v1", Kind: "Secret"},
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: "shop"},
		Data:       map[string][]byte{"password": []byte(password)},
	}
}

// The generated passwords outlive `helm uninstall` (resource-policy keep)
// and a later install or upgrade reuses them; each service's pods carry a
// checksum of their password, so they restart exactly when it changes.
func TestPasswordsSurviveUninstallAndUpgrade(t *testing.T) {
	roles := append([]string{"admin"}, serviceNames...)
	var kept []runtime.Object
	for _, r := range roles {
		kept = append(kept, passwordSecret("switchyard-postgres-"+r, "kept-"+r))
	}
	fresh := mustRender(t, nil)
	for _, r := range roles {
		s, ok := fresh.secrets["switchyard-postgres-"+r]
		if !ok {
			t.Fatalf("no Secret for %s", r)
		}
		if s.Annotations["helm.sh/resource-policy"] != "keep" {
			t.Errorf("Secret %s is deleted by helm uninstall while the volume it belongs to stays", s.Name)
		}
	}
	// Without lookup (a first install, helm template) each password is
	// generated once per rendering: the checksum is that of the very
	// password the Secret gets, or the pods would log in with another.
	for _, d := range fresh.deployments {
		n := strings.TrimPrefix(d.Name, "switchyard-")
		if s, ok := fresh.secrets["switchyard-postgres-"+n]; ok {
			if got, want := d.Spec.Template.Annotations["checksum/db-password"], passwordChecksum(s.Data["password"]); got != want {
				t.Errorf("%s: a fresh rendering's pods carry password checksum %q, its Secret's is %q", n, got, want)
			}
		}
	}
	manifest, err := renderUpgrade(t, nil, kept...)
	if err != nil {
		t.Fatal(err)
	}
	o := decode(t, manifest)
	for _, r := range roles {
		if got := string(o.secrets["switchyard-postgres-"+r].Data["password"]); got != "kept-"+r {
			t.Errorf("%s: password %q, want the kept one", r, got)
		}
	}
	sums := map[string]string{}
	for _, d := range o.deployments {
		sums[d.Name] = d.Spec.Template.Annotations["checksum/db-password"]
	}
	for _, n := range serviceNames {
		if want := passwordChecksum([]byte("kept-" + n)); sums["switchyard-"+n] != want {
			t.Errorf("%s: pods carry password checksum %q, want %q (that of its Secret)", n, sums["switchyard-"+n], want)
		}
	}
	// The Secrets the roles container reads are those very Secrets.
	st := statefulSet(t, o, "-postgres")
	projected := map[string]string{}
	for _, v := range st.Spec.Template.Spec.Volumes {
		if v.Projected != nil {
			for _, src := range v.Projected.Sources {
				if src.Secret != nil && len(src.Secret.Items) == 1 {
					projected[src.Secret.Items[0].Path] = src.Secret.Name
				}
			}
		}
	}
	for _, r := range roles {
		if projected[r+"/password"] != "switchyard-postgres-"+r {
			t.Errorf("the roles container does not read %s's password from its Secret (%v)", r, projected)
		}
	}
}

// The role reconciler runs in the PostgreSQL pod, connected through the
// pod's Unix socket, with the chart's Secrets mounted, and gates the pod's
// readiness.
func TestRolesContainer(t *testing.T) {
	o := mustRender(t, nil)
	spec := statefulSet(t, o, "-postgres").Spec.Template.Spec
	pg, roles := container(t, spec, "postgres"), container(t, spec, "roles")
	if roles.Image != pg.Image {
		t.Errorf("roles image %s differs from the server's %s (psql must match)", roles.Image, pg.Image)
	}
	if envOf(roles)["PGHOST"].Value != "/var/run/postgresql" || !strings.Contains(envOf(pg)["POSTGRES_INITDB_ARGS"].Value, "--auth-local=trust") {
		t.Errorf("the roles container must reach the server over the pod's Unix socket, where no password is needed")
	}
	mounted := func(c corev1.Container, path string) string {
		for _, m := range c.VolumeMounts {
			if m.MountPath == path {
				return m.Name
			}
		}
		return ""
	}
	if v := mounted(pg, "/var/run/postgresql"); v == "" || mounted(roles, "/var/run/postgresql") != v {
		t.Errorf("the server's socket directory is not shared with the roles container")
	}
	if roles.ReadinessProbe == nil || roles.ReadinessProbe.Exec == nil {
		t.Errorf("the roles container's readiness does not wait for the reconcile")
	}
	sc := roles.SecurityContext
	if sc == nil || sc.ReadOnlyRootFilesystem == nil || !*sc.ReadOnlyRootFilesystem || sc.AllowPrivilegeEscalation == nil || *sc.AllowPrivilegeEscalation {
		t.Errorf("the roles container is not locked down: %+v", sc)
	}
	if _, ok := o.configMaps["switchyard-postgres-init"]; ok {
		t.Errorf("an initdb-time role script is still rendered; it would run only on an empty volume")
	}
	if s := o.configMaps["switchyard-postgres-roles"].Data["reconcile-roles.sh"]; s == "" {
		t.Errorf("no reconcile-roles.sh in ConfigMap switchyard-postgres-roles")
	}
}

// The Dockerfile builds offline and with the Go the modules ask for: no
// "# syntax=" line (BuildKit would fetch that frontend image), and a base
// image whose Go satisfies every go.mod (the golang images set
// GOTOOLCHAIN=local, so an older 1.26.x image fails instead of downloading
// a toolchain).
func TestDockerfileBuildsOffline(t *testing.T) {
	b, err := os.ReadFile("../Dockerfile")
	if err != nil {
		t.Fatal(err)
	}
	df := string(b)
	if regexp.MustCompile(`(?mi)^#\s*syntax\s*=`).MatchString(df) {
		t.Error("the Dockerfile has a # syntax= line: BuildKit pulls that frontend image on every build")
	}
	m := regexp.MustCompile(`(?m)^ARG GO_VERSION=(\S+)$`).FindStringSubmatch(df)
	if m == nil {
		t.Fatal("no ARG GO_VERSION=")
	}
	image := goVersion(t, m[1])
	if len(image) < 3 {
		t.Errorf("GO_VERSION=%s names no patch release: an older cached golang:%s image fails the go.mod check under GOTOOLCHAIN=local", m[1], m[1])
	}
	for _, mod := range append([]string{"../gen/go/go.mod", "../platform/go.mod", "../services/rules/go.mod"}, servicesGoMods()...) {
		b, err := os.ReadFile(mod)
		if err != nil {
			t.Fatal(err)
		}
		g := regexp.MustCompile(`(?m)^go (\S+)$`).FindSubmatch(b)
		if g == nil {
			t.Fatalf("%s: no go directive", mod)
		}
		if compareVersions(image, goVersion(t, string(g[1]))) < 0 {
			t.Errorf("%s asks for go %s, the build image has %s", mod, g[1], m[1])
		}
	}
}

func servicesGoMods() []string {
	var out []string
	for _, n := range serviceNames {
		out = append(out, "../services/"+n+"/go.mod")
	}
	return out
}

func goVersion(t *testing.T, v string) []int {
	t.Helper()
	var out []int
	for _, p := range strings.Split(v, ".") {
		n, err := strconv.Atoi(p)
		if err != nil {
			t.Fatalf("version %q", v)
		}
		out = append(out, n)
	}
	return out
}

func compareVersions(a, b []int) int {
	for i := 0; i < max(len(a), len(b)); i++ {
		var x, y int
		if i < len(a) {
			x = a[i]
		}
		if i < len(b) {
			y = b[i]
		}
		if x != y {
			return x - y
		}
	}
	return 0
}

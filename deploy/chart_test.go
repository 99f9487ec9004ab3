// Package deploy checks, without a cluster, what can be checked of the
// Kubernetes deployment: the Helm chart renders in every configuration and
// every object strict-decodes into its k8s.io/api type, cross-references
// hold, Helm's strict lint passes, the values schema rejects bad values, the
// kind and skaffold configs parse under their own types, and the Dockerfile
// builds the services exactly like CI. When `make control-plane` has built
// a Kubernetes control plane into .bin/k8s/, it also runs the chart's
// lifecycle against it (controlplane_test.go).
package deploy

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"testing"

	latest "github.com/GoogleContainerTools/skaffold/v2/pkg/skaffold/schema/latest"
	skaffoldyaml "github.com/GoogleContainerTools/skaffold/v2/pkg/skaffold/yaml"
	"helm.sh/helm/v3/pkg/action"
	"helm.sh/helm/v3/pkg/chart/loader"
	"helm.sh/helm/v3/pkg/chartutil"
	"helm.sh/helm/v3/pkg/lint/support"
	appsv1 "k8s.io/api/apps/v1"
	autoscalingv2 "k8s.io/api/autoscaling/v2"
	corev1 "k8s.io/api/core/v1"
	policyv1 "k8s.io/api/policy/v1"
	k8sjson "sigs.k8s.io/json"
	kindv1alpha4 "sigs.k8s.io/kind/pkg/apis/config/v1alpha4"
	"sigs.k8s.io/yaml"
)

const chartPath = "../charts/switchyard"

// serviceNames are the shop's services as the Makefile and the Dockerfile
// find them: the modules under services/ with a command of their own name
// (services/<name>/cmd/<name>). Every test here checks the chart and
// skaffold against them, so a service missing from the chart's values
// fails here.
var serviceNames = func() []string {
	mains, err := filepath.Glob("../services/*/cmd/*/main.go")
	if err != nil {
		panic(err)
	}
	var names []string
	for _, m := range mains {
		parts := strings.Split(filepath.ToSlash(m), "/") // .. services <name> cmd <name> main.go
		if parts[2] == parts[4] {
			names = append(names, parts[2])
		}
	}
	return names
}()

// render installs the chart client-side (no cluster) with values.
func render(t *testing.T, values map[string]any) (string, error) {
	t.Helper()
	ch, err := loader.Load(chartPath)
	if err != nil {
		t.Fatal(err)
	}
	install := action.NewInstall(&action.Configuration{})
	install.DryRun, install.ClientOnly, install.Replace = true, true, true
	install.ReleaseName, install.Namespace = "switchyard", "shop"
	kv, err := chartutil.ParseKubeVersion("v1.31.0")
	if err != nil {
		t.Fatal(err)
	}
	install.KubeVersion = kv
	rel, err := install.Run(ch, values)
	if err != nil {
		return "", err
	}
	return rel.Manifest, nil
}

// objects is a rendering decoded into typed objects.
type objects struct {
	deployments  []appsv1.Deployment
	statefulSets []appsv1.StatefulSet
	services     []corev1.Service
	secrets      map[string]corev1.Secret
	configMaps   map[string]corev1.ConfigMap
	accounts     map[string]bool
	pdbs         []policyv1.PodDisruptionBudget
	hpas         []autoscalingv2.HorizontalPodAutoscaler
	// serviceMonitors and scaledObjects are custom resources:
	// monitoring_test.go and autoscaling_test.go validate them against
	// their CRDs' schemas.
	serviceMonitors []map[string]any
	scaledObjects   []map[string]any
}

// strict decodes YAML into v the way the API server does, case-sensitively,
// failing on any unknown, misspelled (even only in case) or duplicate field.
func strict(doc []byte, v any) error {
	j, err := yaml.YAMLToJSON(doc)
	if err != nil {
		return err
	}
	strictErrs, err := k8sjson.UnmarshalStrict(j, v, k8sjson.DisallowUnknownFields, k8sjson.DisallowDuplicateFields)
	if err != nil {
		return err
	}
	return errors.Join(strictErrs...)
}

func decode(t *testing.T, manifest string) objects {
	t.Helper()
	o := objects{secrets: map[string]corev1.Secret{}, configMaps: map[string]corev1.ConfigMap{}, accounts: map[string]bool{}}
	for _, doc := range strings.Split(manifest, "\n---") {
		doc = strings.TrimSpace(doc)
		if doc == "" || strings.Trim(doc, "-\n ") == "" {
			continue
		}
		var meta struct {
			Kind string `json:"kind"`
		}
		if err := yaml.Unmarshal([]byte(doc), &meta); err != nil {
			t.Fatalf("not YAML: %v\n%s", err, doc)
		}
		var err error
		switch meta.Kind {
		case "Deployment":
			var d appsv1.Deployment
			err = strict([]byte(doc), &d)
			o.deployments = append(o.deployments, d)
		case "StatefulSet":
			var s appsv1.StatefulSet
			err = strict([]byte(doc), &s)
			o.statefulSets = append(o.statefulSets, s)
		case "Service":
			var s corev1.Service
			err = strict([]byte(doc), &s)
			o.services = append(o.services, s)
		case "Secret":
			var s corev1.Secret
			err = strict([]byte(doc), &s)
			o.secrets[s.Name] = s
		case "ConfigMap":
			var c corev1.ConfigMap
			err = strict([]byte(doc), &c)
			o.configMaps[c.Name] = c
		case "ServiceAccount":
			var a corev1.ServiceAccount
			err = strict([]byte(doc), &a)
			o.accounts[a.Name] = true
		case "PodDisruptionBudget":
			var p policyv1.PodDisruptionBudget
			err = strict([]byte(doc), &p)
			o.pdbs = append(o.pdbs, p)
		case "HorizontalPodAutoscaler":
			var h autoscalingv2.HorizontalPodAutoscaler
			err = strict([]byte(doc), &h)
			o.hpas = append(o.hpas, h)
		case "ServiceMonitor":
			var m map[string]any
			err = yaml.Unmarshal([]byte(doc), &m)
			o.serviceMonitors = append(o.serviceMonitors, m)
		case "ScaledObject":
			var m map[string]any
			err = yaml.Unmarshal([]byte(doc), &m)
			o.scaledObjects = append(o.scaledObjects, m)
		default:
			t.Fatalf("unexpected kind %q: add it to the test's decoder", meta.Kind)
		}
		if err != nil {
			t.Fatalf("%s does not strict-decode: %v\n%s", meta.Kind, err, doc)
		}
	}
	return o
}

type podOwner struct {
	kind, name string
	labels     map[string]string
	spec       corev1.PodSpec
}

func (o objects) pods() []podOwner {
	var out []podOwner
	for _, d := range o.deployments {
		out = append(out, podOwner{"Deployment", d.Name, d.Spec.Template.Labels, d.Spec.Template.Spec})
	}
	for _, s := range o.statefulSets {
		out = append(out, podOwner{"StatefulSet", s.Name, s.Spec.Template.Labels, s.Spec.Template.Spec})
	}
	return out
}

var renderings = map[string]map[string]any{
	"defaults":          nil,
	"external kafka":    {"kafka": map[string]any{"enabled": false, "external": map[string]any{"brokers": "kafka-0.kafka.infra:9092,kafka-1.kafka.infra:9092"}}},
	"external postgres": {"postgresql": map[string]any{"enabled": false, "external": externalDBs()}},
	"replicas 3":        {"services": replicas(3)},
	"tracing off":       {"tracing": map[string]any{"enabled": false}},
	"tracing over http": {"tracing": map[string]any{"enabled": true, "protocol": "http/protobuf"}},
	"external otlp":     {"jaeger": map[string]any{"enabled": false}, "tracing": map[string]any{"enabled": true, "endpoint": "http://otel-collector.observability:4317"}},
	"redis transport":   {"transport": "redis"},
	"external redis":    {"transport": "redis", "redis": map[string]any{"enabled": false, "external": map[string]any{"url": "redis://redis.infra:6379"}}},
	"cache off":         {"cache": map[string]any{"enabled": false}},
	"external cache":    {"redis": map[string]any{"enabled": false, "external": map[string]any{"url": "redis://redis.infra:6379"}}},
	"service monitor":   {"metrics": map[string]any{"serviceMonitor": map[string]any{"enabled": true}, "dashboard": map[string]any{"enabled": false}}},
	// analytics on KEDA instead of its default CPU HPA, and on fixed
	// replicas with no autoscaler (autoscaling_test.go checks each).
	"analytics keda":           analyticsValues(map[string]any{"keda": map[string]any{"enabled": true}}),
	"analytics fixed replicas": {"analytics": map[string]any{"autoscaling": map[string]any{"enabled": false}}, "services": map[string]any{"analytics": map[string]any{"replicas": 2}}},
}

func externalDBs() map[string]any {
	m := map[string]any{}
	for _, n := range serviceNames {
		m[n] = map[string]any{"secretName": "db-" + n, "secretKey": "url"}
	}
	return m
}

func replicas(n int) map[string]any {
	m := map[string]any{}
	for _, name := range serviceNames {
		m[name] = map[string]any{"replicas": n, "env": map[string]any{}}
	}
	return m
}

// externalHosts are the hosts a rendering may name without creating them.
var externalHosts = map[string]bool{"kafka-0.kafka.infra": true, "kafka-1.kafka.infra": true, "otel-collector.observability": true, "redis.infra": true}

// chartService is the Service a host names in the rendering's namespace
// ("shop"): its short name, or <name>.shop.svc, which clients in other
// namespaces (KEDA's scaler) can resolve too.
func chartService(host string) string {
	return strings.TrimSuffix(host, ".shop.svc")
}

var hostRE = regexp.MustCompile(`^(?:[a-z+]+://)?(?:[^@/]*@)?([a-z0-9.-]+):[0-9]+`)

func TestChartRenderings(t *testing.T) {
	// Custom resources have no k8s.io/api type: their CRDs' schemas judge
	// them instead.
	validateServiceMonitor := crdValidator(t, "testdata/servicemonitors.monitoring.coreos.com.yaml")
	validateScaledObject := crdValidator(t, kedaCRD(t))
	for name, values := range renderings {
		t.Run(name, func(t *testing.T) {
			manifest, err := render(t, values)
			if err != nil {
				t.Fatalf("render: %v", err)
			}
			o := decode(t, manifest)
			for _, m := range o.serviceMonitors {
				for _, p := range validateServiceMonitor(m) {
					t.Errorf("ServiceMonitor: %s", p)
				}
			}
			for _, m := range o.scaledObjects {
				for _, p := range validateScaledObject(m) {
					t.Errorf("ScaledObject: %s", p)
				}
			}
			pods := o.pods()
			services := map[string]bool{}
			for _, s := range o.services {
				services[s.Name] = true
				// Each Service selects pods that exist.
				matched := false
				for _, p := range pods {
					if subset(s.Spec.Selector, p.labels) {
						matched = true
						// Each Service's target ports are container ports.
						for _, sp := range s.Spec.Ports {
							if !hasPort(p.spec, sp.TargetPort.String()) {
								t.Errorf("Service %s targets port %s that %s %s does not expose", s.Name, sp.TargetPort.String(), p.kind, p.name)
							}
						}
					}
				}
				if !matched || len(s.Spec.Selector) == 0 {
					t.Errorf("Service %s selects no pod", s.Name)
				}
			}
			for _, p := range pods {
				if p.spec.ServiceAccountName != "" && !o.accounts[p.spec.ServiceAccountName] {
					t.Errorf("%s %s uses missing ServiceAccount %s", p.kind, p.name, p.spec.ServiceAccountName)
				}
				for _, v := range p.spec.Volumes {
					if v.ConfigMap != nil {
						if _, ok := o.configMaps[v.ConfigMap.Name]; !ok {
							t.Errorf("%s %s mounts missing ConfigMap %s", p.kind, p.name, v.ConfigMap.Name)
						}
					}
					if v.Projected != nil {
						for _, src := range v.Projected.Sources {
							if src.Secret != nil {
								if _, ok := o.secrets[src.Secret.Name]; !ok {
									t.Errorf("%s %s mounts missing Secret %s", p.kind, p.name, src.Secret.Name)
								}
							}
						}
					}
				}
				for _, c := range p.spec.Containers {
					// Every image has an explicit tag.
					if i := strings.LastIndex(c.Image, ":"); i < 0 || strings.Contains(c.Image[i:], "/") || strings.HasSuffix(c.Image, ":latest") {
						t.Errorf("%s %s: image %q has no explicit tag", p.kind, p.name, c.Image)
					}
					for _, probe := range []*corev1.Probe{c.ReadinessProbe, c.LivenessProbe, c.StartupProbe} {
						if probe == nil {
							continue
						}
						switch {
						case probe.GRPC != nil && !hasPort(p.spec, fmt.Sprint(probe.GRPC.Port)):
							t.Errorf("%s %s: gRPC probe port %d is not a container port", p.kind, p.name, probe.GRPC.Port)
						case probe.TCPSocket != nil && !hasPort(p.spec, probe.TCPSocket.Port.String()):
							t.Errorf("%s %s: TCP probe port %s is not a container port", p.kind, p.name, probe.TCPSocket.Port.String())
						case probe.HTTPGet != nil && !hasPort(p.spec, probe.HTTPGet.Port.String()):
							t.Errorf("%s %s: HTTP probe port %s is not a container port", p.kind, p.name, probe.HTTPGet.Port.String())
						}
					}
					for _, e := range c.Env {
						if e.ValueFrom != nil && e.ValueFrom.SecretKeyRef != nil {
							ref := e.ValueFrom.SecretKeyRef
							if _, ok := o.secrets[ref.Name]; !ok && !strings.HasPrefix(ref.Name, "db-") {
								t.Errorf("%s %s: env %s refers to missing Secret %s", p.kind, p.name, e.Name, ref.Name)
							}
						}
						// Each env var naming a host names a chart Service or
						// the configured external one.
						if e.Value != "" && (strings.HasSuffix(e.Name, "_BROKERS") || strings.HasSuffix(e.Name, "_URL") || strings.HasSuffix(e.Name, "_ENDPOINT")) {
							for _, part := range strings.Split(e.Value, ",") {
								m := hostRE.FindStringSubmatch(part)
								if m == nil {
									t.Errorf("%s %s: env %s=%q names no host:port", p.kind, p.name, e.Name, e.Value)
									continue
								}
								if !services[chartService(m[1])] && !externalHosts[m[1]] {
									t.Errorf("%s %s: env %s names host %s, which is neither a chart Service nor configured", p.kind, p.name, e.Name, m[1])
								}
							}
						}
					}
				}
			}
			checkServices(t, name, o)
		})
	}
}

// With the Redis transport, a durable Redis replaces Kafka: append-only file
// fsynced on every write, no eviction, a persistent volume, non-root with a
// read-only root filesystem.
func TestRedisTransportRendering(t *testing.T) {
	manifest, err := render(t, map[string]any{"transport": "redis"})
	if err != nil {
		t.Fatal(err)
	}
	o := decode(t, manifest)
	var redis *appsv1.StatefulSet
	for i, st := range o.statefulSets {
		if strings.HasSuffix(st.Name, "-kafka") {
			t.Errorf("Kafka StatefulSet %s rendered with transport redis", st.Name)
		}
		if strings.HasSuffix(st.Name, "-redis") {
			redis = &o.statefulSets[i]
		}
	}
	if redis == nil {
		t.Fatal("no Redis StatefulSet")
	}
	c := redis.Spec.Template.Spec.Containers[0]
	args := strings.Join(c.Args, " ")
	for _, want := range []string{"--appendonly yes", "--appendfsync always", "--maxmemory-policy noeviction", "--dir /data"} {
		if !strings.Contains(args, want) {
			t.Errorf("redis args %q lack %q", args, want)
		}
	}
	if strings.HasSuffix(c.Image, ":latest") || !strings.HasPrefix(c.Image, "redis:7.") {
		t.Errorf("redis image %q, want an official redis 7 image with an explicit tag", c.Image)
	}
	if len(redis.Spec.VolumeClaimTemplates) != 1 || len(c.VolumeMounts) != 1 || c.VolumeMounts[0].MountPath != "/data" {
		t.Errorf("redis data is not on a persistent volume at /data")
	}
	ps := redis.Spec.Template.Spec.SecurityContext
	if ps == nil || ps.RunAsNonRoot == nil || !*ps.RunAsNonRoot || c.SecurityContext == nil || c.SecurityContext.ReadOnlyRootFilesystem == nil || !*c.SecurityContext.ReadOnlyRootFilesystem {
		t.Errorf("redis must run as non-root with a read-only root filesystem")
	}
	if c.ReadinessProbe == nil || c.LivenessProbe == nil || c.StartupProbe == nil {
		t.Errorf("redis lacks a readiness, liveness or startup probe")
	}
	headless := false
	for _, s := range o.services {
		if s.Name == redis.Spec.ServiceName && s.Spec.ClusterIP == "None" {
			headless = true
		}
	}
	if !headless {
		t.Errorf("redis StatefulSet's serviceName %q is not a headless Service", redis.Spec.ServiceName)
	}
}

// checkServices asserts what every rendering promises for the six services.
func checkServices(t *testing.T, rendering string, o objects) {
	t.Helper()
	byName := map[string]appsv1.Deployment{}
	for _, d := range o.deployments {
		byName[d.Name] = d
	}
	for _, n := range serviceNames {
		d, ok := byName["switchyard-"+n]
		if !ok {
			t.Fatalf("no Deployment for %s", n)
		}
		spec := d.Spec.Template.Spec
		c := spec.Containers[0]
		if spec.SecurityContext == nil || spec.SecurityContext.RunAsNonRoot == nil || !*spec.SecurityContext.RunAsNonRoot {
			t.Errorf("%s: not runAsNonRoot", n)
		}
		sc := c.SecurityContext
		if sc == nil || sc.ReadOnlyRootFilesystem == nil || !*sc.ReadOnlyRootFilesystem || sc.Capabilities == nil || len(sc.Capabilities.Drop) == 0 || sc.Capabilities.Drop[0] != "ALL" {
			t.Errorf("%s: root filesystem not read-only or capabilities not dropped", n)
		}
		if c.ReadinessProbe == nil || c.ReadinessProbe.GRPC == nil || c.LivenessProbe == nil || c.LivenessProbe.GRPC == nil {
			t.Errorf("%s: readiness and liveness must be native gRPC probes", n)
		}
		env := map[string]corev1.EnvVar{}
		for _, e := range c.Env {
			env[e.Name] = e
		}
		if _, ok := env["SWITCHYARD_DATABASE_URL"]; !ok {
			t.Errorf("%s: no SWITCHYARD_DATABASE_URL", n)
		}
		transport := "kafka"
		if strings.Contains(rendering, "redis") {
			transport = "redis"
		}
		if got := env["SWITCHYARD_TRANSPORT"].Value; got != transport {
			t.Errorf("%s: SWITCHYARD_TRANSPORT=%q, want %q", n, got, transport)
		}
		_, brokers := env["SWITCHYARD_KAFKA_BROKERS"]
		_, redisURL := env["SWITCHYARD_REDIS_URL"]
		if brokers != (transport == "kafka") || redisURL != (transport == "redis") {
			t.Errorf("%s: SWITCHYARD_KAFKA_BROKERS set=%v, SWITCHYARD_REDIS_URL set=%v on transport %s", n, brokers, redisURL, transport)
		}
		// Only inventory caches, in database 1 of the chart's (or the
		// external) Redis; the transport keeps database 0.
		cacheURL, cached := env["SWITCHYARD_CACHE_URL"]
		if wantCache := n == "inventory" && rendering != "cache off"; cached != wantCache {
			t.Errorf("%s: SWITCHYARD_CACHE_URL set=%v, want %v in rendering %q", n, cached, wantCache, rendering)
		}
		if cached && !strings.HasSuffix(cacheURL.Value, ":6379/1") {
			t.Errorf("%s: SWITCHYARD_CACHE_URL=%q, want database 1 of Redis", n, cacheURL.Value)
		}
		// Whoever creates a topic first sets its retention, so every
		// service is told it; only analytics has scoring work.
		if _, ok := env["SWITCHYARD_TOPIC_RETENTION"]; !ok {
			t.Errorf("%s: no SWITCHYARD_TOPIC_RETENTION", n)
		}
		if _, ok := env["SWITCHYARD_ANALYTICS_WORK"]; ok != (n == "analytics") {
			t.Errorf("%s: SWITCHYARD_ANALYTICS_WORK set=%v", n, ok)
		}
		_, traced := env["OTEL_EXPORTER_OTLP_ENDPOINT"]
		if traced == (rendering == "tracing off") {
			t.Errorf("%s: tracing env present=%v in rendering %q", n, traced, rendering)
		}
	}
	// replicas 3 gives each service but analytics, whose HPA owns its
	// count from minReplicas 1, a PodDisruptionBudget.
	wantPDBs := map[string]int{"replicas 3": 5, "analytics fixed replicas": 1}[rendering]
	if len(o.pdbs) != wantPDBs {
		t.Errorf("%d PodDisruptionBudgets, want %d", len(o.pdbs), wantPDBs)
	}
}

func subset(sel, labels map[string]string) bool {
	for k, v := range sel {
		if labels[k] != v {
			return false
		}
	}
	return true
}

func hasPort(spec corev1.PodSpec, port string) bool {
	for _, c := range spec.Containers {
		for _, p := range c.Ports {
			if p.Name == port || fmt.Sprint(p.ContainerPort) == port {
				return true
			}
		}
	}
	return false
}

// Helm's own linter, strict, over default values and each switch.
func TestChartLintStrict(t *testing.T) {
	for name, values := range renderings {
		lint := action.NewLint()
		lint.Strict = true
		kv, _ := chartutil.ParseKubeVersion("v1.31.0")
		lint.KubeVersion = kv
		res := lint.Run([]string{chartPath}, values)
		for _, msg := range res.Messages {
			// As `helm lint --strict`: warnings and errors fail, INFO does not.
			if msg.Severity > support.InfoSev {
				t.Errorf("%s: helm lint: %s", name, msg)
			}
		}
		for _, err := range res.Errors {
			t.Errorf("%s: helm lint: %v", name, err)
		}
	}
}

// The stock cache gets the chart's Redis (no eviction, durable settings)
// by default, also with the Kafka transport; with the cache off and Kafka
// carrying events, no Redis is deployed.
func TestCacheRedisRendering(t *testing.T) {
	for _, tc := range []struct {
		rendering string
		wantRedis bool
	}{
		{"defaults", true},
		{"cache off", false},
		{"external cache", false},
	} {
		t.Run(tc.rendering, func(t *testing.T) {
			manifest, err := render(t, renderings[tc.rendering])
			if err != nil {
				t.Fatalf("render: %v", err)
			}
			var redis *appsv1.StatefulSet
			for i, st := range decode(t, manifest).statefulSets {
				if strings.HasSuffix(st.Name, "-redis") {
					redis = &decode(t, manifest).statefulSets[i]
				}
			}
			if (redis != nil) != tc.wantRedis {
				t.Fatalf("Redis StatefulSet rendered=%v, want %v", redis != nil, tc.wantRedis)
			}
			if redis == nil {
				return
			}
			args := strings.Join(redis.Spec.Template.Spec.Containers[0].Args, " ")
			if !strings.Contains(args, "--maxmemory-policy noeviction") {
				t.Errorf("the cache's Redis may evict keys: args %q", args)
			}
		})
	}
}

// A Redis that never evicts must have a maxmemory below its container's
// memory limit: without one it grows until the kernel kills it, and its
// append-only file then needs as much memory to load again (a crash loop);
// with one, a full Redis refuses writes and keeps running. maxmemory leaves
// room under the limit for what it does not count (fragmentation, an
// append-only file rewrite's forked child, connection buffers).
func TestRedisMaxmemoryFitsItsLimit(t *testing.T) {
	for _, tc := range []struct {
		name     string
		values   map[string]any
		limitMiB int64
	}{
		{"defaults (the cache)", nil, 512},
		{"redis transport, 2Gi", map[string]any{"transport": "redis", "redis": map[string]any{"enabled": true, "resources": map[string]any{"limits": map[string]any{"memory": "2Gi"}}}}, 2048},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := container(t, statefulSet(t, mustRender(t, tc.values), "-redis").Spec.Template.Spec, "redis")
			if mebibytes(t, c) != tc.limitMiB {
				t.Fatalf("memory limit %d MiB, want %d", mebibytes(t, c), tc.limitMiB)
			}
			args := map[string]string{}
			for i := 0; i+1 < len(c.Args); i += 2 {
				args[c.Args[i]] = c.Args[i+1]
			}
			if args["--maxmemory-policy"] != "noeviction" {
				t.Errorf("maxmemory-policy %q, want noeviction", args["--maxmemory-policy"])
			}
			// Redis reads "mb" as MiB (1024*1024 bytes).
			m := regexp.MustCompile(`^([0-9]+)mb$`).FindStringSubmatch(args["--maxmemory"])
			if m == nil {
				t.Fatalf("--maxmemory %q, want <n>mb", args["--maxmemory"])
			}
			maxmemory, _ := strconv.ParseInt(m[1], 10, 64)
			if maxmemory < tc.limitMiB/2 || maxmemory > tc.limitMiB*8/10 {
				t.Errorf("maxmemory %d MiB under a %d MiB limit: want between half (room for the data) and 80%% (room for what maxmemory does not count)", maxmemory, tc.limitMiB)
			}
		})
	}
	_, err := render(t, map[string]any{"redis": map[string]any{"enabled": true, "resources": map[string]any{"limits": nil}}})
	if err == nil || !strings.Contains(err.Error(), "redis.resources.limits.memory is required") {
		t.Errorf("Redis without a memory limit rendered (error %v): its maxmemory cannot be sized", err)
	}
}

// values.schema.json rejects wrong types, unknown keys, untagged images and
// an external Redis URL the chart cannot append a database to, and the
// templates refuse missing external settings, each with a message that says
// which (another failure would not pass for the one a case expects).
func TestBadValuesRefused(t *testing.T) {
	for name, tc := range map[string]struct {
		values map[string]any
		want   string // in the error
	}{
		"replicas as text":    {map[string]any{"services": map[string]any{"orders": map[string]any{"replicas": "three"}}}, "'/services/orders/replicas': got string, want integer"},
		"misspelled key":      {map[string]any{"kafka": map[string]any{"enabeld": false}}, "additional properties 'enabeld' not allowed"},
		"unknown outbox":      {map[string]any{"service": map[string]any{"outboxMode": "debezium"}}, "'/service/outboxMode': value must be one of"},
		"latest image":        {map[string]any{"jaeger": map[string]any{"image": map[string]any{"repository": "jaegertracing/jaeger", "tag": "latest"}}}, "'/jaeger/image/tag'"},
		"missing brokers":     {map[string]any{"kafka": map[string]any{"enabled": false}}, "kafka.external.brokers is required"},
		"missing db secrets":  {map[string]any{"postgresql": map[string]any{"enabled": false}}, "secretName is required when postgresql.enabled is false"},
		"unknown transport":   {map[string]any{"transport": "nats"}, "'/transport': value must be one of"},
		"missing redis url":   {map[string]any{"transport": "redis", "redis": map[string]any{"enabled": false}}, "redis.external.url is required"},
		"cache without redis": {map[string]any{"redis": map[string]any{"enabled": false}}, "redis.external.url is required"},
		"cache as text":       {map[string]any{"cache": "on"}, "'/cache': got string, want object"},
		"redis url with a database": {map[string]any{"redis": map[string]any{"enabled": false, "external": map[string]any{"url": "redis://redis.infra:6379/0"}}},
			"'/redis/external/url'"},
		"redis url with a query": {map[string]any{"redis": map[string]any{"enabled": false, "external": map[string]any{"url": "rediss://:pw@redis.infra:6379?protocol=3"}}},
			"'/redis/external/url'"},
	} {
		_, err := render(t, tc.values)
		if err == nil {
			t.Errorf("%s: the chart rendered", name)
		} else if !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: refused with %q, which does not say %q", name, err, tc.want)
		}
	}
}

// The chart's values name exactly the services there are, so a new service
// that forgot its chart values, or a chart entry left behind by a removed
// service, fails here.
func TestChartValuesListEveryService(t *testing.T) {
	values, err := chartutil.ReadValuesFile(chartPath + "/values.yaml")
	if err != nil {
		t.Fatal(err)
	}
	services, err := values.Table("services")
	if err != nil {
		t.Fatal(err)
	}
	var chart []string
	for name := range services {
		chart = append(chart, name)
	}
	sort.Strings(chart)
	want := append([]string(nil), serviceNames...)
	sort.Strings(want)
	if strings.Join(chart, " ") != strings.Join(want, " ") {
		t.Errorf("values.yaml services: %v; services/<name>/cmd/<name>: %v", chart, want)
	}
}

// The kind cluster config parses strictly under kind's own types.
func TestKindConfig(t *testing.T) {
	b, err := os.ReadFile("kind/cluster.yaml")
	if err != nil {
		t.Fatal(err)
	}
	var c kindv1alpha4.Cluster
	if err := strict(b, &c); err != nil {
		t.Fatalf("deploy/kind/cluster.yaml: %v", err)
	}
	if c.Kind != "Cluster" || c.APIVersion != "kind.x-k8s.io/v1alpha4" || len(c.Nodes) == 0 {
		t.Fatalf("kind config %+v", c)
	}
}

// skaffold.yaml parses strictly under skaffold's own (latest) schema types,
// builds the six images and deploys the chart.
func TestSkaffoldConfig(t *testing.T) {
	b, err := os.ReadFile("../skaffold.yaml")
	if err != nil {
		t.Fatal(err)
	}
	var c latest.SkaffoldConfig
	if err := skaffoldyaml.UnmarshalStrict(b, &c); err != nil {
		t.Fatalf("skaffold.yaml: %v", err)
	}
	if c.APIVersion != latest.Version {
		t.Fatalf("skaffold.yaml apiVersion %s, want %s", c.APIVersion, latest.Version)
	}
	if c.Render.Helm == nil || len(c.Render.Helm.Releases) != 1 || c.Render.Helm.Releases[0].ChartPath != "charts/switchyard" {
		t.Fatalf("skaffold does not deploy charts/switchyard")
	}
	// Each service's image is built and handed to the chart as that
	// service's image (else the chart deploys the stale <repository>-<name>
	// tag), and nothing else is built or set.
	built := map[string]bool{}
	for _, a := range c.Build.Artifacts {
		built[a.ImageName] = true
	}
	set := map[string]string(c.Render.Helm.Releases[0].SetValueTemplates)
	want := map[string]bool{}
	for _, n := range serviceNames {
		image := "switchyard-" + n
		want[image] = true
		if !built[image] {
			t.Errorf("skaffold does not build %s", image)
		}
		key := "services." + n + ".image"
		if tmpl := "{{.IMAGE_FULLY_QUALIFIED_" + strings.ReplaceAll(image, "-", "_") + "}}"; set[key] != tmpl {
			t.Errorf("skaffold sets %s to %q, want %q (the image it built)", key, set[key], tmpl)
		}
	}
	for image := range built {
		if !want[image] {
			t.Errorf("skaffold builds %s, which is no service's", image)
		}
	}
	for key := range set {
		if name, ok := strings.CutSuffix(strings.TrimPrefix(key, "services."), ".image"); ok && !want["switchyard-"+name] {
			t.Errorf("skaffold sets %s, which is no service's", key)
		}
	}
	// Into make deploy's namespace, which the README's kubectl commands
	// use: elsewhere it would be a second release beside that one.
	makefile, err := os.ReadFile("../Makefile")
	if err != nil {
		t.Fatal(err)
	}
	m := regexp.MustCompile(`helm upgrade --install[^\n]*(?:\\\n[^\n]*)*--namespace (\S+) --create-namespace`).FindSubmatch(makefile)
	if m == nil {
		t.Fatal("the Makefile's helm upgrade --install names no --namespace ... --create-namespace")
	}
	release := c.Render.Helm.Releases[0]
	if release.Namespace != string(m[1]) || release.CreateNamespace == nil || !*release.CreateNamespace {
		t.Errorf("skaffold installs into namespace %q (createNamespace %v), make deploy into %q", release.Namespace, release.CreateNamespace, m[1])
	}
	for _, pf := range c.PortForward {
		if pf.Namespace != string(m[1]) {
			t.Errorf("skaffold port-forwards %s %s in namespace %q, the release is in %q", pf.Type, pf.Name, pf.Namespace, m[1])
		}
	}
	profiles := map[string]bool{}
	for _, p := range c.Profiles {
		profiles[p.Name] = true
	}
	if !profiles["kind"] || !profiles["minikube"] {
		t.Errorf("profiles %v, want kind and minikube", profiles)
	}
}

// The Dockerfile's build command is `make build`'s, and it builds every
// service `make build` builds from what the Dockerfile copies into the image and nothing
// else, so a module a service needs but the Dockerfile does not copy (a
// new shared module, say) fails here rather than in docker build.
func TestDockerfileBuildsLikeCI(t *testing.T) {
	dockerfile, err := os.ReadFile("../Dockerfile")
	if err != nil {
		t.Fatal(err)
	}
	makefile, err := os.ReadFile("../Makefile")
	if err != nil {
		t.Fatal(err)
	}
	docker := regexp.MustCompile(`(GOWORK=off go build [^\n]*?) -o /out/service \./cmd/\$\{SERVICE\}`).FindSubmatch(dockerfile)
	mk := regexp.MustCompile(`(?m)^GOBUILD\s*:=\s*(.+)$`).FindSubmatch(makefile)
	if docker == nil || mk == nil {
		t.Fatalf("could not find the build command (Dockerfile %q, Makefile %q)", docker, mk)
	}
	if string(docker[1]) != strings.TrimSpace(string(mk[1])) {
		t.Fatalf("Dockerfile builds with %q, make build with %q", docker[1], mk[1])
	}
	copies := regexp.MustCompile(`(?m)^COPY ([^-\n][^\n]*)$`).FindAllSubmatch(dockerfile, -1)
	if len(copies) == 0 {
		t.Fatal("the Dockerfile copies nothing from the build context")
	}
	args := strings.Fields(string(docker[1]))[1:] // drop GOWORK=off
	services := serviceNames
	if len(services) == 0 {
		t.Fatal("no services/<name>/cmd/<name>/main.go")
	}
	for _, n := range services {
		src := t.TempDir() // the image's /src
		for _, c := range copies {
			paths := strings.Fields(strings.ReplaceAll(string(c[1]), "${SERVICE}", n))
			copyInto(t, src, paths[:len(paths)-1], paths[len(paths)-1])
		}
		cmd := exec.Command(args[0], append(args[1:], "-o", t.TempDir()+"/"+n, "./cmd/"+n)...)
		cmd.Dir = filepath.Join(src, "services", n)
		cmd.Env = append(os.Environ(), "GOWORK=off", "CGO_ENABLED=1")
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("%s, from what the Dockerfile copies: %s: %v\n%s", n, strings.Join(cmd.Args, " "), err, out)
		}
	}
}

// copyInto does what a Dockerfile's COPY srcs... dest does with paths of
// the repository: a directory's contents go to dest, a file goes into dest
// when dest ends in a slash, and to dest otherwise; existing files are
// overwritten.
func copyInto(t *testing.T, root string, srcs []string, dest string) {
	t.Helper()
	for _, s := range srcs {
		from := filepath.Join("..", s)
		to := filepath.Join(root, dest)
		err := filepath.WalkDir(from, func(path string, d os.DirEntry, err error) error {
			if err != nil || d.IsDir() {
				return err
			}
			target := to
			switch rel, _ := filepath.Rel(from, path); {
			case rel != ".":
				target = filepath.Join(to, rel)
			case strings.HasSuffix(dest, "/"):
				target = filepath.Join(to, filepath.Base(path))
			}
			b, err := os.ReadFile(path)
			if err != nil {
				return err
			}
			if err := os.MkdirAll(filepath.Dir(target), 0o755); err != nil {
				return err
			}
			return os.WriteFile(target, b, 0o644)
		})
		if err != nil {
			t.Fatalf("COPY %s %s: %v", s, dest, err)
		}
	}
}

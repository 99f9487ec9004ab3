package deploy

import (
	"bytes"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	autoscalingv2 "k8s.io/api/autoscaling/v2"
	corev1 "k8s.io/api/core/v1"
)

// kedaModule holds KEDA's CustomResourceDefinitions; ../tools/keda/go.mod
// and go.sum pin its version and checksum.
const kedaModule = "github.com/kedacore/keda/v2"

// kedaCRD returns the path of KEDA's own ScaledObject CRD: the module
// ../tools/keda pins is downloaded from the Go module proxy into the module
// cache (checked against tools/keda/go.sum; later runs find it there), so
// the repository carries none of KEDA's files.
func kedaCRD(t *testing.T) string {
	t.Helper()
	cmd := exec.Command("go", "mod", "download", "-json", kedaModule)
	cmd.Dir = "../tools/keda"
	cmd.Env = append(os.Environ(), "GOWORK=off")
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	var mod struct{ Dir, Error string }
	if jerr := json.Unmarshal(out, &mod); err == nil && jerr != nil {
		err = jerr
	}
	if err != nil || mod.Dir == "" {
		t.Fatalf("download %s (tools/keda) for its ScaledObject CRD: %v %s\n%s", kedaModule, err, mod.Error, stderr.String())
	}
	return filepath.Join(mod.Dir, "config", "crd", "bases", "keda.sh_scaledobjects.yaml")
}

// scaledObject is the part of a KEDA ScaledObject the tests read; the CRD
// schema validates the whole.
type scaledObject struct {
	Metadata struct {
		Name string `json:"name"`
	} `json:"metadata"`
	Spec struct {
		ScaleTargetRef struct {
			APIVersion string `json:"apiVersion"`
			Kind       string `json:"kind"`
			Name       string `json:"name"`
		} `json:"scaleTargetRef"`
		MinReplicaCount int32 `json:"minReplicaCount"`
		MaxReplicaCount int32 `json:"maxReplicaCount"`
		Triggers        []struct {
			Type     string            `json:"type"`
			Metadata map[string]string `json:"metadata"`
		} `json:"triggers"`
	} `json:"spec"`
}

func asScaledObject(t *testing.T, m map[string]any) scaledObject {
	t.Helper()
	j, err := json.Marshal(m)
	if err != nil {
		t.Fatal(err)
	}
	var so scaledObject
	if err := json.Unmarshal(j, &so); err != nil {
		t.Fatalf("ScaledObject: %v", err)
	}
	return so
}

// analyticsTopics are the topics analytics consumes, as the shop's
// registry lists them (shop/registry, which an end-to-end test checks
// against the topics the running service's group reads), so that a new
// subscription reaches the KEDA triggers or fails here.
func analyticsTopics(t *testing.T, prefix string) []string {
	t.Helper()
	b, err := os.ReadFile("../shop/registry/registry.go")
	if err != nil {
		t.Fatal(err)
	}
	m := regexp.MustCompile(`(?s)\{Name: "analytics",[^}]*Consumes: \[\]string\{([^}]*)\}`).FindSubmatch(b)
	if m == nil {
		t.Fatal("shop/registry/registry.go has no analytics entry with `Consumes: []string{...}`: where does the registry list its topics now?")
	}
	var topics []string
	for _, q := range strings.Split(string(m[1]), ",") {
		topic, err := strconv.Unquote(strings.TrimSpace(q))
		if err != nil {
			t.Fatalf("analytics Consumes: %q: %v", q, err)
		}
		// The registry lists them with the default prefix.
		topics = append(topics, prefix+strings.TrimPrefix(topic, "switchyard."))
	}
	slices.Sort(topics)
	return topics
}

// analyticsValues builds the analytics values of a test case.
func analyticsValues(autoscaling map[string]any) map[string]any {
	return map[string]any{"analytics": map[string]any{"autoscaling": autoscaling}}
}

// analytics scales out through a CPU HPA (default), a KEDA ScaledObject on
// its consumer lag (never both), or fixed replicas; whichever scales it
// stays within the partition count, and the connection budget covers its
// maximum.
func TestAnalyticsAutoscaling(t *testing.T) {
	validate := crdValidator(t, kedaCRD(t))
	for _, tc := range []struct {
		name     string
		values   map[string]any
		scaler   string // "hpa", "keda" or "" (fixed replicas)
		min, max int32  // the autoscaler's, or the fixed replicas
		brokers  string // the KEDA triggers' bootstrapServers
		prefix   string // the topic prefix
	}{
		{name: "defaults", scaler: "hpa", min: 1, max: 3, prefix: "switchyard."},
		{name: "hpa 2 to 6", values: analyticsValues(map[string]any{"minReplicas": 2, "maxReplicas": 6, "targetCPUUtilization": 50}),
			scaler: "hpa", min: 2, max: 6, prefix: "switchyard."},
		{name: "keda", values: analyticsValues(map[string]any{"keda": map[string]any{"enabled": true}}),
			scaler: "keda", min: 1, max: 3, brokers: "switchyard-kafka.shop.svc:9092", prefix: "switchyard."},
		{name: "keda, external kafka, 12 partitions, own prefix", values: map[string]any{
			"analytics": map[string]any{"autoscaling": map[string]any{"maxReplicas": 12, "keda": map[string]any{"enabled": true, "lagThreshold": 500}}},
			"kafka":     map[string]any{"enabled": false, "external": map[string]any{"brokers": "kafka-0.kafka.infra:9092,kafka-1.kafka.infra:9092"}},
			"service":   map[string]any{"topicPartitions": 12, "topicPrefix": "shop."},
		}, scaler: "keda", min: 1, max: 12, brokers: "kafka-0.kafka.infra:9092,kafka-1.kafka.infra:9092", prefix: "shop."},
		{name: "fixed replicas", values: map[string]any{
			"analytics": map[string]any{"autoscaling": map[string]any{"enabled": false}},
			"services":  map[string]any{"analytics": map[string]any{"replicas": 6}},
		}, min: 6, max: 6, prefix: "switchyard."},
	} {
		t.Run(tc.name, func(t *testing.T) {
			o := mustRender(t, tc.values)
			var d *appsv1.Deployment
			for i := range o.deployments {
				if o.deployments[i].Name == "switchyard-analytics" {
					d = &o.deployments[i]
				}
			}
			if d == nil {
				t.Fatal("no analytics Deployment")
			}
			c := d.Spec.Template.Spec.Containers[0]
			env := envOf(c)
			if got := env["SWITCHYARD_ANALYTICS_WORK"].Value; got != "20ms" {
				t.Errorf("SWITCHYARD_ANALYTICS_WORK=%q, want the chart's 20ms", got)
			}
			// Only one autoscaler may own the Deployment's replicas: KEDA
			// makes an HPA of its own, so the chart's must be absent then.
			hpas, scaled := len(o.hpas), len(o.scaledObjects)
			switch tc.scaler {
			case "hpa":
				if hpas != 1 || scaled != 0 {
					t.Fatalf("%d HPAs and %d ScaledObjects, want 1 HPA", hpas, scaled)
				}
				checkHPA(t, o.hpas[0], d, tc.min, tc.max)
			case "keda":
				if hpas != 0 || scaled != 1 {
					t.Fatalf("%d HPAs and %d ScaledObjects, want 1 ScaledObject", hpas, scaled)
				}
				for _, p := range validate(o.scaledObjects[0]) {
					t.Errorf("ScaledObject against KEDA's CRD: %s", p)
				}
				so := asScaledObject(t, o.scaledObjects[0])
				ref := so.Spec.ScaleTargetRef
				if ref.APIVersion != "apps/v1" || ref.Kind != "Deployment" || ref.Name != d.Name {
					t.Errorf("ScaledObject targets %+v, want the Deployment %s", ref, d.Name)
				}
				if so.Spec.MinReplicaCount != tc.min || so.Spec.MaxReplicaCount != tc.max {
					t.Errorf("ScaledObject replicas %d..%d, want %d..%d", so.Spec.MinReplicaCount, so.Spec.MaxReplicaCount, tc.min, tc.max)
				}
				var topics []string
				for _, tr := range so.Spec.Triggers {
					md := tr.Metadata
					if tr.Type != "kafka" || md["consumerGroup"] != "analytics" || md["bootstrapServers"] != tc.brokers {
						t.Errorf("trigger %s %v: want kafka, group analytics (the service's name), brokers %s", tr.Type, md, tc.brokers)
					}
					if md["bootstrapServers"] != env["SWITCHYARD_KAFKA_BROKERS"].Value {
						t.Errorf("trigger reads brokers %q, analytics uses %q", md["bootstrapServers"], env["SWITCHYARD_KAFKA_BROKERS"].Value)
					}
					// KEDA's scaler runs in KEDA's namespace, not the release's:
					// a short Service name would resolve there to nothing.
					for _, b := range strings.Split(md["bootstrapServers"], ",") {
						if host, _, _ := strings.Cut(b, ":"); !strings.Contains(host, ".") {
							t.Errorf("trigger broker %q is a namespace-relative name, which KEDA's operator (in its own namespace) cannot resolve", b)
						}
					}
					topics = append(topics, md["topic"])
				}
				slices.Sort(topics)
				if want := analyticsTopics(t, tc.prefix); !slices.Equal(topics, want) {
					t.Errorf("triggers on topics %v, want one on each topic analytics consumes: %v", topics, want)
				}
				// The broker answers KEDA's metadata request with the address it
				// advertises, which KEDA then connects to: that one must
				// resolve from KEDA's namespace too.
				if tc.brokers == "switchyard-kafka.shop.svc:9092" {
					kafka := container(t, statefulSet(t, o, "-kafka").Spec.Template.Spec, "kafka")
					if got := envOf(kafka)["KAFKA_ADVERTISED_LISTENERS"].Value; got != "PLAINTEXT://"+tc.brokers {
						t.Errorf("Kafka advertises %q, want PLAINTEXT://%s (what KEDA bootstraps from)", got, tc.brokers)
					}
				}
			default:
				if hpas != 0 || scaled != 0 {
					t.Fatalf("%d HPAs and %d ScaledObjects with autoscaling off", hpas, scaled)
				}
			}
			if tc.scaler != "" && d.Spec.Replicas != nil {
				t.Errorf("the autoscaled Deployment sets replicas %d: each upgrade would reset the autoscaler's count", *d.Spec.Replicas)
			}
			if tc.scaler == "" && (d.Spec.Replicas == nil || *d.Spec.Replicas != tc.max) {
				t.Errorf("Deployment replicas %v, want %d", d.Spec.Replicas, tc.max)
			}
			partitions, err := strconv.Atoi(env["SWITCHYARD_TOPIC_PARTITIONS"].Value)
			if err != nil || tc.max > int32(partitions) {
				t.Errorf("up to %d instances on %q partitions", tc.max, env["SWITCHYARD_TOPIC_PARTITIONS"].Value)
			}
			// A PodDisruptionBudget exactly when at least 2 pods always run.
			pdb := false
			for _, p := range o.pdbs {
				pdb = pdb || p.Name == d.Name
			}
			if pdb != (tc.min > 1) {
				t.Errorf("PodDisruptionBudget %v with at least %d pods", pdb, tc.min)
			}
			// PostgreSQL is sized for the most pods the scaler may run.
			need, _ := connectionNeed(t, o)
			if got, err := strconv.Atoi(postgresSettings(t, o)["max_connections"]); err != nil || got < need {
				t.Errorf("max_connections %d, the services may need %d", got, need)
			}
		})
	}
}

// checkHPA checks the CPU HPA of the analytics Deployment d.
func checkHPA(t *testing.T, h autoscalingv2.HorizontalPodAutoscaler, d *appsv1.Deployment, min, max int32) {
	t.Helper()
	ref := h.Spec.ScaleTargetRef
	if ref.APIVersion != "apps/v1" || ref.Kind != "Deployment" || ref.Name != d.Name {
		t.Errorf("HPA targets %+v, want the Deployment %s", ref, d.Name)
	}
	if h.Spec.MinReplicas == nil || *h.Spec.MinReplicas != min || h.Spec.MaxReplicas != max {
		t.Errorf("HPA replicas %v..%d, want %d..%d", h.Spec.MinReplicas, h.Spec.MaxReplicas, min, max)
	}
	if len(h.Spec.Metrics) != 1 {
		t.Fatalf("HPA metrics %+v, want CPU utilization alone", h.Spec.Metrics)
	}
	m := h.Spec.Metrics[0]
	if m.Type != autoscalingv2.ResourceMetricSourceType || m.Resource == nil || m.Resource.Name != corev1.ResourceCPU ||
		m.Resource.Target.Type != autoscalingv2.UtilizationMetricType || m.Resource.Target.AverageUtilization == nil {
		t.Fatalf("HPA metric %+v, want CPU utilization", m)
	}
	if u := *m.Resource.Target.AverageUtilization; u < 1 || u > 100 {
		t.Errorf("HPA CPU target %d%%", u)
	}
	// Utilization is a percentage of the request: without one the HPA
	// cannot compute it.
	for _, c := range d.Spec.Template.Spec.Containers {
		if c.Resources.Requests.Cpu().IsZero() {
			t.Errorf("container %s requests no CPU, which the HPA's utilization is a share of", c.Name)
		}
	}
}

// The KEDA CRD validator the tests rely on catches what a typo in the
// template would produce: a misspelled or unknown field, a value of the
// wrong type, a broken cross-field rule (CEL) and a wrong apiVersion.
func TestScaledObjectValidatorCatchesMistakes(t *testing.T) {
	validate := crdValidator(t, kedaCRD(t))
	o := mustRender(t, analyticsValues(map[string]any{"keda": map[string]any{"enabled": true}}))
	if len(o.scaledObjects) != 1 {
		t.Fatalf("%d ScaledObjects", len(o.scaledObjects))
	}
	if p := validate(o.scaledObjects[0]); len(p) > 0 {
		t.Fatalf("the rendered ScaledObject: %v", p)
	}
	for _, tc := range []struct {
		name   string
		mutate func(spec map[string]any, obj map[string]any)
	}{
		{"misspelled field", func(spec, _ map[string]any) {
			spec["maxReplicaCont"] = spec["maxReplicaCount"]
			delete(spec, "maxReplicaCount")
		}},
		{"field in the wrong place", func(spec, _ map[string]any) { spec["scaleTargetRef"].(map[string]any)["replicas"] = 2 }},
		{"number where metadata wants a string", func(spec, _ map[string]any) {
			spec["triggers"].([]any)[0].(map[string]any)["metadata"].(map[string]any)["lagThreshold"] = 100
		}},
		{"text where an integer goes", func(spec, _ map[string]any) { spec["pollingInterval"] = "15s" }},
		{"min above max (a CEL rule)", func(spec, _ map[string]any) { spec["minReplicaCount"] = 5 }},
		{"no triggers", func(spec, _ map[string]any) { delete(spec, "triggers") }},
		{"wrong apiVersion", func(_, obj map[string]any) { obj["apiVersion"] = "keda.sh/v1" }},
		{"wrong kind", func(_, obj map[string]any) { obj["kind"] = "ScaledJob" }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var obj map[string]any
			j, _ := json.Marshal(o.scaledObjects[0])
			if err := json.Unmarshal(j, &obj); err != nil {
				t.Fatal(err)
			}
			tc.mutate(obj["spec"].(map[string]any), obj)
			if p := validate(obj); len(p) == 0 {
				t.Errorf("KEDA's CRD schema accepted it")
			} else {
				t.Logf("refused: %v", p)
			}
		})
	}
}

// Settings that cannot work are refused with a message saying why and what
// to do, before anything reaches a cluster.
func TestAnalyticsScalingRefused(t *testing.T) {
	for _, tc := range []struct {
		name   string
		values map[string]any
		want   string // in the error
	}{
		{"maxReplicas above the partitions", analyticsValues(map[string]any{"maxReplicas": 7}),
			"analytics.autoscaling.maxReplicas=7 exceeds service.topicPartitions=6"},
		{"KEDA maxReplicas above fewer partitions", map[string]any{
			"analytics": map[string]any{"autoscaling": map[string]any{"keda": map[string]any{"enabled": true}}},
			"service":   map[string]any{"topicPartitions": 2},
		}, "analytics.autoscaling.maxReplicas=3 exceeds service.topicPartitions=2"},
		{"fixed replicas above the partitions", map[string]any{
			"analytics": map[string]any{"autoscaling": map[string]any{"enabled": false}},
			"services":  map[string]any{"analytics": map[string]any{"replicas": 7}},
		}, "services.analytics.replicas=7 exceeds service.topicPartitions=6"},
		{"min above max", analyticsValues(map[string]any{"minReplicas": 4, "maxReplicas": 3}),
			"analytics.autoscaling.minReplicas=4 exceeds maxReplicas=3"},
		{"KEDA with the Redis transport", map[string]any{
			"analytics": map[string]any{"autoscaling": map[string]any{"keda": map[string]any{"enabled": true}}},
			"transport": "redis",
		}, "analytics.autoscaling.keda.enabled needs transport=kafka"},
		{"KEDA without autoscaling", analyticsValues(map[string]any{"enabled": false, "keda": map[string]any{"enabled": true}}),
			"analytics.autoscaling.keda.enabled needs analytics.autoscaling.enabled=true"},
		{"CPU HPA without a CPU request", map[string]any{
			"services": map[string]any{"analytics": map[string]any{"resources": map[string]any{"requests": map[string]any{"cpu": nil, "memory": "64Mi"}}}},
		}, "set services.analytics.resources.requests.cpu"},
		{"no instance", analyticsValues(map[string]any{"minReplicas": 0}), "minReplicas"},
		{"lag threshold 0", analyticsValues(map[string]any{"keda": map[string]any{"enabled": true, "lagThreshold": 0}}), "lagThreshold"},
		{"misspelled KEDA switch", analyticsValues(map[string]any{"keda": map[string]any{"enable": true}}), "enable"},
		{"retention in days", map[string]any{"service": map[string]any{"topicRetention": "7d"}}, "topicRetention"},
		{"work not a duration", map[string]any{"analytics": map[string]any{"work": "heavy"}}, "work"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := render(t, tc.values)
			if err == nil {
				t.Fatal("the chart rendered")
			}
			if !strings.Contains(err.Error(), tc.want) {
				t.Errorf("error %q does not say %q", err, tc.want)
			}
		})
	}
}

// SWITCHYARD_TOPIC_RETENTION reaches every service, since whichever
// creates a topic first sets its retention; the chart keeps events for
// ever unless told otherwise, as `make run` does.
func TestTopicRetention(t *testing.T) {
	for _, tc := range []struct {
		values map[string]any
		want   string
	}{
		{nil, "0s"},
		{map[string]any{"service": map[string]any{"topicRetention": "720h"}}, "720h"},
	} {
		o := mustRender(t, tc.values)
		for _, n := range serviceNames {
			var found bool
			for _, d := range o.deployments {
				if d.Name == "switchyard-"+n {
					found = true
					if got := envOf(d.Spec.Template.Spec.Containers[0])["SWITCHYARD_TOPIC_RETENTION"].Value; got != tc.want {
						t.Errorf("%s: SWITCHYARD_TOPIC_RETENTION=%q, want %q", n, got, tc.want)
					}
				}
			}
			if !found {
				t.Errorf("no Deployment for %s", n)
			}
		}
	}
}

// scaledReplicas is the most pods Deployment d may run: the maximum of the
// HPA or ScaledObject that scales it, or its replicas.
func (o objects) scaledReplicas(t *testing.T, d appsv1.Deployment) int {
	t.Helper()
	for _, h := range o.hpas {
		if h.Spec.ScaleTargetRef.Kind == "Deployment" && h.Spec.ScaleTargetRef.Name == d.Name {
			return int(h.Spec.MaxReplicas)
		}
	}
	for _, m := range o.scaledObjects {
		if so := asScaledObject(t, m); so.Spec.ScaleTargetRef.Name == d.Name {
			return int(so.Spec.MaxReplicaCount)
		}
	}
	if d.Spec.Replicas == nil {
		t.Fatalf("Deployment %s sets no replicas and nothing scales it", d.Name)
	}
	return int(*d.Spec.Replicas)
}

package deploy

import (
	"context"
	"encoding/json"
	"fmt"
	"maps"
	"os"
	"regexp"
	"slices"
	"strings"
	"testing"

	"k8s.io/apiextensions-apiserver/pkg/apis/apiextensions"
	apiextensionsv1 "k8s.io/apiextensions-apiserver/pkg/apis/apiextensions/v1"
	structuralschema "k8s.io/apiextensions-apiserver/pkg/apiserver/schema"
	"k8s.io/apiextensions-apiserver/pkg/apiserver/schema/cel"
	"k8s.io/apiextensions-apiserver/pkg/apiserver/schema/pruning"
	"k8s.io/apiextensions-apiserver/pkg/apiserver/validation"
	utiljson "k8s.io/apimachinery/pkg/util/json"
	"k8s.io/apimachinery/pkg/util/validation/field"
	celconfig "k8s.io/apiserver/pkg/apis/cel"
	"sigs.k8s.io/yaml"
)

var seriesRE = regexp.MustCompile(`switchyard_[a-z_]+`)

// exportedSeries are the Prometheus series the services define: every
// "switchyard_..." name in the non-test Go code of platform/ and services/.
func exportedSeries(t *testing.T) map[string]bool {
	t.Helper()
	return sourceMatches(t, regexp.MustCompile(`"(switchyard_[a-z_]+)"`), "../platform", "../services")
}

// The Grafana dashboard ships in a ConfigMap Grafana's sidecar discovers,
// covers what an operator looks at first, and queries only series the
// services export.
func TestDashboardQueriesExportedSeries(t *testing.T) {
	o := mustRender(t, nil)
	cm, ok := o.configMaps["switchyard-grafana-dashboard"]
	if !ok {
		t.Fatal("no Grafana dashboard ConfigMap")
	}
	if cm.Labels["grafana_dashboard"] != "1" {
		t.Errorf("dashboard ConfigMap labels %v: Grafana's sidecar looks for grafana_dashboard=1", cm.Labels)
	}
	var dash struct {
		UID    string `json:"uid"`
		Panels []struct {
			Title   string `json:"title"`
			Targets []struct {
				Expr string `json:"expr"`
			} `json:"targets"`
		} `json:"panels"`
	}
	if err := json.Unmarshal([]byte(cm.Data["switchyard.json"]), &dash); err != nil {
		t.Fatalf("dashboard JSON: %v", err)
	}
	exported := exportedSeries(t)
	queried := map[string]bool{}
	for _, p := range dash.Panels {
		if len(p.Targets) == 0 {
			t.Errorf("panel %q queries nothing", p.Title)
		}
		for _, tg := range p.Targets {
			for _, name := range seriesRE.FindAllString(tg.Expr, -1) {
				base := name
				for _, suffix := range []string{"_bucket", "_sum", "_count"} {
					if b := strings.TrimSuffix(name, suffix); b != name && exported[b] {
						base = b
					}
				}
				if !exported[base] {
					t.Errorf("panel %q queries %s, which no service exports", p.Title, name)
				}
				queried[base] = true
			}
		}
	}
	for _, want := range []string{
		"switchyard_relay_oldest_unpublished_age_seconds", "switchyard_relay_slot_lag_bytes", "switchyard_relay_invisible_waits_total",
		"switchyard_consumer_lag_messages", "switchyard_consumer_buffered_messages", "switchyard_consumer_retries_total", "switchyard_consumer_dead_lettered_total",
		"switchyard_saga_outcomes_total", "switchyard_saga_duration_seconds",
		"switchyard_grpc_requests_total", "switchyard_grpc_request_duration_seconds",
	} {
		if !queried[want] {
			t.Errorf("the dashboard shows nothing of %s", want)
		}
	}
	if _, err := render(t, map[string]any{"metrics": map[string]any{"dashboard": map[string]any{"enabled": false}, "serviceMonitor": map[string]any{"enabled": false}}}); err != nil {
		t.Errorf("without the dashboard: %v", err)
	}
}

// crdValidator validates objects as the API server does for the CRD in
// file: the object's apiVersion and kind must be ones the CRD serves, and
// then, with that version's schema, its OpenAPI validation, its
// x-kubernetes-validations (CEL) rules, and no field the schema does not
// know (which the server would silently prune).
func crdValidator(t *testing.T, file string) func(obj map[string]any) []string {
	t.Helper()
	b, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	var crd apiextensionsv1.CustomResourceDefinition
	if err := yaml.Unmarshal(b, &crd); err != nil {
		t.Fatalf("%s: %v", file, err)
	}
	type schemas struct {
		validator  validation.SchemaValidator
		structural *structuralschema.Structural
		cel        *cel.Validator // nil when the version has no CEL rules
	}
	served := map[string]schemas{} // by apiVersion
	for _, v := range crd.Spec.Versions {
		if !v.Served || v.Schema == nil {
			continue
		}
		var internal apiextensions.JSONSchemaProps
		if err := apiextensionsv1.Convert_v1_JSONSchemaProps_To_apiextensions_JSONSchemaProps(v.Schema.OpenAPIV3Schema, &internal, nil); err != nil {
			t.Fatalf("%s %s: %v", file, v.Name, err)
		}
		validator, _, err := validation.NewSchemaValidator(&internal)
		if err != nil {
			t.Fatalf("%s %s: %v", file, v.Name, err)
		}
		structural, err := structuralschema.NewStructural(&internal)
		if err != nil {
			t.Fatalf("%s %s: %v", file, v.Name, err)
		}
		served[crd.Spec.Group+"/"+v.Name] = schemas{validator, structural, cel.NewValidator(structural, true, celconfig.PerCallLimit)}
	}
	if len(served) == 0 {
		t.Fatalf("%s serves no version with a schema", file)
	}
	return func(obj map[string]any) []string {
		apiVersion, _ := obj["apiVersion"].(string)
		kind, _ := obj["kind"].(string)
		s, ok := served[apiVersion]
		if !ok || kind != crd.Spec.Names.Kind {
			return []string{fmt.Sprintf("apiVersion %q kind %q: the CRD %s serves kind %s in %v", apiVersion, kind, crd.Name, crd.Spec.Names.Kind, slices.Sorted(maps.Keys(served)))}
		}
		// A copy as the API server decodes JSON (whole numbers as int64,
		// which CEL and pruning expect), so the caller's object stays as
		// it was.
		j, err := json.Marshal(obj)
		if err != nil {
			return []string{err.Error()}
		}
		var copied map[string]any
		if err := utiljson.Unmarshal(j, &copied); err != nil {
			return []string{err.Error()}
		}
		var problems []string
		for _, e := range validation.ValidateCustomResource(field.NewPath(""), copied, s.validator) {
			problems = append(problems, e.Error())
		}
		if s.cel != nil {
			errs, _ := s.cel.Validate(context.Background(), field.NewPath(""), s.structural, copied, nil, celconfig.RuntimeCELCostBudget)
			for _, e := range errs {
				problems = append(problems, e.Error())
			}
		}
		for _, p := range pruning.PruneWithOptions(copied, s.structural, true, structuralschema.UnknownFieldPathOptions{TrackUnknownFieldPaths: true}) {
			problems = append(problems, "unknown field "+p)
		}
		return problems
	}
}

// With metrics.serviceMonitor.enabled, the ServiceMonitor is valid under
// the Prometheus Operator's own CRD schema (shipped in testdata/), selects
// exactly the six services' Services and scrapes their metrics port; the
// pods carry prometheus.io/* annotations naming that port.
func TestServiceMonitorAndScrapeAnnotations(t *testing.T) {
	validate := crdValidator(t, "testdata/servicemonitors.monitoring.coreos.com.yaml")
	o := mustRender(t, map[string]any{"metrics": map[string]any{"serviceMonitor": map[string]any{"enabled": true, "labels": map[string]any{"release": "kube-prometheus-stack"}}}})
	if len(o.serviceMonitors) != 1 {
		t.Fatalf("%d ServiceMonitors, want 1", len(o.serviceMonitors))
	}
	sm := o.serviceMonitors[0]
	if sm["apiVersion"] != "monitoring.coreos.com/v1" {
		t.Errorf("apiVersion %v", sm["apiVersion"])
	}
	for _, p := range validate(sm) {
		t.Errorf("ServiceMonitor: %s", p)
	}
	// The validator itself catches a misspelled field.
	bad := map[string]any{"apiVersion": "monitoring.coreos.com/v1", "kind": "ServiceMonitor", "metadata": map[string]any{"name": "x"},
		"spec": map[string]any{"selector": map[string]any{}, "endpoints": []any{map[string]any{"prot": "metrics"}}}}
	if len(validate(bad)) == 0 {
		t.Error("the CRD validator accepted a misspelled endpoint field")
	}
	var spec struct {
		Spec struct {
			Selector struct {
				MatchLabels map[string]string `json:"matchLabels"`
			} `json:"selector"`
			PodTargetLabels []string `json:"podTargetLabels"`
			Endpoints       []struct {
				Port string `json:"port"`
				Path string `json:"path"`
			} `json:"endpoints"`
		} `json:"spec"`
	}
	j, _ := json.Marshal(sm)
	if err := json.Unmarshal(j, &spec); err != nil {
		t.Fatal(err)
	}
	var selected []string
	for _, s := range o.services {
		if len(spec.Spec.Selector.MatchLabels) > 0 && subset(spec.Spec.Selector.MatchLabels, s.Labels) {
			selected = append(selected, s.Name)
			for _, e := range spec.Spec.Endpoints {
				found := false
				for _, p := range s.Spec.Ports {
					found = found || p.Name == e.Port
				}
				if !found {
					t.Errorf("Service %s has no port %q to scrape", s.Name, e.Port)
				}
			}
		}
	}
	if len(selected) != len(serviceNames) {
		t.Errorf("the ServiceMonitor selects %v, want the six services", selected)
	}
	if strings.Join(spec.Spec.PodTargetLabels, ",") != "app.kubernetes.io/name" {
		t.Errorf("podTargetLabels %v: the dashboard groups by app_kubernetes_io_name", spec.Spec.PodTargetLabels)
	}
	for _, d := range o.deployments {
		if strings.HasSuffix(d.Name, "-jaeger") {
			continue
		}
		a := d.Spec.Template.Annotations
		if a["prometheus.io/scrape"] != "true" || a["prometheus.io/path"] != "/metrics" || !hasPort(d.Spec.Template.Spec, a["prometheus.io/port"]) {
			t.Errorf("%s: prometheus.io annotations %v do not name its metrics port", d.Name, a)
		}
	}
}

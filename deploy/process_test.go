package deploy

import (
	"net/url"
	"strconv"
	"strings"
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	"sigs.k8s.io/yaml"
)

// deployment returns the Deployment named switchyard-<name>.
func deployment(t *testing.T, o objects, name string) appsv1.Deployment {
	t.Helper()
	for _, d := range o.deployments {
		if d.Name == "switchyard-"+name {
			return d
		}
	}
	t.Fatalf("no Deployment switchyard-%s", name)
	return appsv1.Deployment{}
}

// Each service's OTLP endpoint reaches, through the Jaeger Service, the
// port on which Jaeger's configuration runs the receiver of the protocol
// the service exports with: an HTTP exporter posting to the gRPC receiver
// (or the reverse) loses every span.
func TestTracingReachesJaeger(t *testing.T) {
	for _, tc := range []struct {
		protocol string // tracing.protocol
		receiver string // Jaeger's OTLP receiver protocol for it
	}{
		{"grpc", "grpc"},
		{"http/protobuf", "http"},
	} {
		t.Run(tc.protocol, func(t *testing.T) {
			o := mustRender(t, map[string]any{"tracing": map[string]any{"enabled": true, "protocol": tc.protocol}})
			jaeger := deployment(t, o, "jaeger")
			var cfg struct {
				Receivers struct {
					OTLP struct {
						Protocols map[string]struct {
							Endpoint string `json:"endpoint"`
						} `json:"protocols"`
					} `json:"otlp"`
				} `json:"receivers"`
			}
			if err := yaml.Unmarshal([]byte(o.configMaps["switchyard-jaeger-config"].Data["config.yaml"]), &cfg); err != nil {
				t.Fatalf("Jaeger's config.yaml: %v", err)
			}
			listen := cfg.Receivers.OTLP.Protocols[tc.receiver].Endpoint
			_, receiverPort, ok := strings.Cut(listen, ":")
			if !ok {
				t.Fatalf("Jaeger runs no OTLP %s receiver (protocols %+v)", tc.receiver, cfg.Receivers.OTLP.Protocols)
			}
			for _, n := range serviceNames {
				env := envOf(deployment(t, o, n).Spec.Template.Spec.Containers[0])
				if got := env["OTEL_EXPORTER_OTLP_PROTOCOL"].Value; got != tc.protocol {
					t.Errorf("%s: OTEL_EXPORTER_OTLP_PROTOCOL=%q, want %q", n, got, tc.protocol)
				}
				u, err := url.Parse(env["OTEL_EXPORTER_OTLP_ENDPOINT"].Value)
				if err != nil || u.Scheme != "http" {
					t.Fatalf("%s: OTEL_EXPORTER_OTLP_ENDPOINT=%q, want an http:// URL (insecure, in-cluster)", n, env["OTEL_EXPORTER_OTLP_ENDPOINT"].Value)
				}
				// The Service port the endpoint names, its target port, and
				// the Jaeger container port that is.
				var target string
				for _, s := range o.services {
					if s.Name != chartService(u.Hostname()) {
						continue
					}
					for _, p := range s.Spec.Ports {
						if strconv.Itoa(int(p.Port)) == u.Port() {
							target = p.TargetPort.String()
						}
					}
				}
				if target == "" {
					t.Fatalf("%s: endpoint %s is no port of a chart Service", n, u.Host)
				}
				containerPort := ""
				for _, p := range container(t, jaeger.Spec.Template.Spec, "jaeger").Ports {
					if p.Name == target || strconv.Itoa(int(p.ContainerPort)) == target {
						containerPort = strconv.Itoa(int(p.ContainerPort))
					}
				}
				if containerPort != receiverPort {
					t.Errorf("%s exports %s to %s, which reaches Jaeger's port %q; its OTLP %s receiver listens on %s", n, tc.protocol, u.Host, containerPort, tc.receiver, listen)
				}
			}
		})
	}
}

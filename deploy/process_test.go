package deploy

import (
	"context"
	"fmt"
	"io/fs"
	"net/url"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	"helm.sh/helm/v3/pkg/chart/loader"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/yaml"

	"github.com/switchyard/switchyard/platform/service"
	"github.com/switchyard/switchyard/platform/telemetry"
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

// processEnv is the environment a container's process sees: the chart's
// values, with each Secret reference resolved from the rendering's Secrets
// (the generated passwords) or, for an external database's Secret that the
// rendering only names, a stand-in URL of that service's database.
func processEnv(t *testing.T, o objects, service string, c corev1.Container) map[string]string {
	t.Helper()
	env := map[string]string{}
	for _, e := range c.Env {
		switch {
		case e.ValueFrom == nil:
			env[e.Name] = e.Value
		case e.ValueFrom.SecretKeyRef != nil:
			ref := e.ValueFrom.SecretKeyRef
			if s, ok := o.secrets[ref.Name]; ok {
				env[e.Name] = string(s.Data[ref.Key])
			} else if e.Name == "SWITCHYARD_DATABASE_URL" {
				env[e.Name] = "postgres://" + service + "@db.infra:5432/" + service
			} else {
				t.Fatalf("%s: env %s from Secret %s, which the rendering lacks", service, e.Name, ref.Name)
			}
		default:
			t.Fatalf("%s: env %s from %+v: resolve it here", service, e.Name, e.ValueFrom)
		}
	}
	return env
}

// getenvCalls matches a read of an environment variable by name in Go
// source: getenv("SWITCHYARD_X") or os.Getenv("SWITCHYARD_X").
var getenvCalls = regexp.MustCompile(`[gG]etenv\("([A-Z][A-Z0-9_]*)"\)`)

// sourceMatchList returns the first submatch of each match of re in the
// non-test Go files below roots, once per match.
func sourceMatchList(t *testing.T, re *regexp.Regexp, roots ...string) []string {
	t.Helper()
	var found []string
	for _, root := range roots {
		err := filepath.WalkDir(root, func(path string, d fs.DirEntry, err error) error {
			if err != nil || d.IsDir() || !strings.HasSuffix(path, ".go") || strings.HasSuffix(path, "_test.go") {
				return err
			}
			b, err := os.ReadFile(path)
			for _, m := range re.FindAllSubmatch(b, -1) {
				found = append(found, string(m[1]))
			}
			return err
		})
		if err != nil {
			t.Fatal(err)
		}
	}
	return found
}

// sourceMatches is the set of sourceMatchList.
func sourceMatches(t *testing.T, re *regexp.Regexp, roots ...string) map[string]bool {
	t.Helper()
	found := map[string]bool{}
	for _, m := range sourceMatchList(t, re, roots...) {
		found[m] = true
	}
	return found
}

// Every environment variable the chart sets for a service is one the
// service reads, and its value is accepted: the platform's own loader
// (service.LoadConfig) and tracing set-up (telemetry.SetupTracing) run on
// each rendered container's environment, recording what they read; the
// service's own options (orders' saga timeout, analytics' work) are found
// in its source. The addresses the process listens on are the container
// ports the probes, Services and scrape annotations use, the pools are
// the sizes the PostgreSQL budget counts, and the liveness and startup
// probes ask for the health service the platform keeps SERVING.
func TestChartEnvIsWhatTheServicesRead(t *testing.T) {
	// Read by libraries rather than by name in the platform: the
	// PostgreSQL password by pgconn (checked below, on the service's own
	// URL), the service name by the OpenTelemetry SDK's resource detector,
	// which SetupTracing installs (checked in its source here).
	telemetrySource, err := os.ReadFile("../platform/telemetry/telemetry.go")
	if err != nil {
		t.Fatal(err)
	}
	libraries := map[string]bool{"PGPASSWORD": true}
	if strings.Contains(string(telemetrySource), "resource.WithFromEnv()") {
		libraries["OTEL_SERVICE_NAME"] = true
	}
	platformReads := sourceMatches(t, getenvCalls, "../platform/telemetry") // SWITCHYARD_VERSION
	cases := map[string]map[string]any{
		"own ports": {"service": map[string]any{"port": 6000, "metricsPort": 7000, "database": map[string]any{"maxConns": 7, "watchConns": 2}}},
	}
	for name, values := range renderings {
		cases[name] = values
	}
	for rendering, values := range cases {
		t.Run(rendering, func(t *testing.T) {
			o := mustRender(t, values)
			for _, n := range serviceNames {
				d := deployment(t, o, n)
				c := d.Spec.Template.Spec.Containers[0]
				env := processEnv(t, o, n, c)
				read := map[string]bool{}
				getenv := func(k string) string {
					read[k] = true
					return env[k]
				}
				// Port 1 as the default: a chart that stopped setting the
				// addresses would show here as a mismatch.
				cfg, err := service.LoadConfig(1, getenv)
				if err != nil {
					t.Errorf("%s: the platform's loader refuses the chart's environment: %v", n, err)
					continue
				}
				if telemetry.Enabled(getenv) {
					shutdown, err := telemetry.SetupTracing(context.Background(), n, getenv)
					if err != nil {
						t.Errorf("%s: tracing refuses the chart's environment: %v", n, err)
					} else if err := shutdown(context.Background()); err != nil {
						t.Errorf("%s: tracing shutdown: %v", n, err)
					}
				}
				own := sourceMatches(t, getenvCalls, filepath.Join("../services", n))
				for _, e := range c.Env {
					if !read[e.Name] && !own[e.Name] && !platformReads[e.Name] && !libraries[e.Name] {
						t.Errorf("%s: the chart sets %s, which neither service.LoadConfig, telemetry nor services/%s reads", n, e.Name, n)
					}
				}
				// The password reaches the connection the service opens.
				if pw, ok := env["PGPASSWORD"]; ok {
					t.Setenv("PGPASSWORD", pw)
				}
				pc, err := pgconn.ParseConfig(cfg.DatabaseURL)
				if err != nil {
					t.Errorf("%s: SWITCHYARD_DATABASE_URL: %v", n, err)
				} else if pw, ok := env["PGPASSWORD"]; ok && pc.Password != pw {
					t.Errorf("%s: the connection's password is not PGPASSWORD", n)
				}
				ports := map[string]int32{}
				for _, p := range c.Ports {
					ports[p.Name] = p.ContainerPort
				}
				if want := fmt.Sprintf(":%d", ports["grpc"]); cfg.GRPCAddr != want {
					t.Errorf("%s: gRPC listens on %q, the grpc container port is %d", n, cfg.GRPCAddr, ports["grpc"])
				}
				if want := fmt.Sprintf(":%d", ports["metrics"]); cfg.MetricsAddr != want {
					t.Errorf("%s: metrics are served on %q, the metrics container port is %d", n, cfg.MetricsAddr, ports["metrics"])
				}
				if got := d.Spec.Template.Annotations["prometheus.io/port"]; got != fmt.Sprint(ports["metrics"]) {
					t.Errorf("%s: prometheus.io/port %q, metrics on %q", n, got, cfg.MetricsAddr)
				}
				// connectionNeed budgets what these variables say; the
				// service must size its pools the same.
				if got, _ := strconv.Atoi(env["SWITCHYARD_DATABASE_MAX_CONNS"]); got < 1 || int(cfg.DatabaseMaxConns) != got {
					t.Errorf("%s: pool of %d, the budget counts SWITCHYARD_DATABASE_MAX_CONNS=%q", n, cfg.DatabaseMaxConns, env["SWITCHYARD_DATABASE_MAX_CONNS"])
				}
				if got, _ := strconv.Atoi(env["SWITCHYARD_WATCH_DB_CONNS"]); got < 1 || cfg.WatchDBConns != got {
					t.Errorf("%s: watch pool of %d, the budget counts SWITCHYARD_WATCH_DB_CONNS=%q", n, cfg.WatchDBConns, env["SWITCHYARD_WATCH_DB_CONNS"])
				}
				// Liveness and startup ask for the entry that is SERVING
				// while the process runs; readiness for the server's own
				// status, which turns SERVING once the database and broker
				// are reachable.
				for probe, p := range map[string]*corev1.Probe{"liveness": c.LivenessProbe, "startup": c.StartupProbe, "readiness": c.ReadinessProbe} {
					want := service.LivenessService
					if probe == "readiness" {
						want = ""
					}
					if p == nil || p.GRPC == nil {
						t.Errorf("%s: no gRPC %s probe", n, probe)
						continue
					}
					if got := ptr.Deref(p.GRPC.Service, ""); got != want {
						t.Errorf("%s: %s probe asks for health service %q, want %q", n, probe, got, want)
					}
					if p.GRPC.Port != ports["grpc"] {
						t.Errorf("%s: %s probe on port %d, gRPC on %d", n, probe, p.GRPC.Port, ports["grpc"])
					}
				}
			}
		})
	}
}

// platformSeconds returns the whole seconds that re's first submatch
// captures in the platform source file, failing with where to look when
// the code no longer matches.
func platformSeconds(t *testing.T, file string, re *regexp.Regexp, what string) int {
	t.Helper()
	b, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	m := re.FindSubmatch(b)
	if m == nil {
		t.Fatalf("%s: no longer found in %s (%s): find it there and update this test and switchyard.terminationGrace", what, file, re)
	}
	n, _ := strconv.Atoi(string(m[1]))
	return n
}

// A service pod's terminationGracePeriodSeconds exceeds the longest its
// stop can take, in platform/service's order: the preStop drain, in-flight
// RPCs (SWITCHYARD_SHUTDOWN_TIMEOUT as the platform's loader reads it from
// the rendered environment), the outbox relay's wait for acknowledgements
// (the relay's default, read from its source) and the trace flush (read
// from service.Main). A kubelet SIGKILL before that costs the relay's
// confirmation (events sent again) and the traces of the shutdown.
func TestTerminationGraceCoversShutdown(t *testing.T) {
	relayFlush := platformSeconds(t, "../platform/relay/relay.go",
		regexp.MustCompile(`c\.ShutdownTimeout = (\d+) \* time\.Second`), "the relay's default ShutdownTimeout")
	serviceSource, err := os.ReadFile("../platform/service/service.go")
	if err != nil {
		t.Fatal(err)
	}
	if m := regexp.MustCompile(`(?s)relay\.New\(relay\.Config\{.*?\}\)`).Find(serviceSource); m == nil || strings.Contains(string(m), "ShutdownTimeout") {
		t.Fatalf("platform/service no longer leaves the relay's ShutdownTimeout at its default (relay.New(relay.Config{...}) in service.go): derive the relay's flush from what it sets")
	}
	traceFlush := platformSeconds(t, "../platform/service/service.go",
		regexp.MustCompile(`WithTimeout\(context\.Background\(\), (\d+)\s*\*\s*time\.Second\)[^\n]*\n(?:[^\n]*\n){0,3}[^\n]*shutdownTracing\(`), "service.Main's trace flush timeout")
	for _, tc := range []struct {
		name   string
		values map[string]any
		drain  int32 // the preStop sleep
	}{
		{"defaults", nil, 5},
		{"long RPCs, no drain", map[string]any{"service": map[string]any{"shutdown": map[string]any{"drainSeconds": 0, "timeoutSeconds": 60}}}, 0},
		{"long drain", map[string]any{"service": map[string]any{"shutdown": map[string]any{"drainSeconds": 15, "timeoutSeconds": 20}}}, 15},
	} {
		t.Run(tc.name, func(t *testing.T) {
			o := mustRender(t, tc.values)
			for _, n := range serviceNames {
				d := deployment(t, o, n)
				spec := d.Spec.Template.Spec
				c := spec.Containers[0]
				cfg, err := service.LoadConfig(1, func(k string) string { return processEnv(t, o, n, c)[k] })
				if err != nil {
					t.Fatalf("%s: %v", n, err)
				}
				var drain int32
				if c.Lifecycle != nil && c.Lifecycle.PreStop != nil {
					if c.Lifecycle.PreStop.Sleep == nil {
						t.Fatalf("%s: preStop %+v: the distroless image has no shell, only a sleep action can wait", n, c.Lifecycle.PreStop)
					}
					drain = int32(c.Lifecycle.PreStop.Sleep.Seconds)
				}
				if drain != tc.drain {
					t.Errorf("%s: preStop sleeps %d s, want %d", n, drain, tc.drain)
				}
				worst := int64(drain) + int64(cfg.ShutdownTimeout/time.Second) + int64(relayFlush) + int64(traceFlush)
				if grace := ptr.Deref(spec.TerminationGracePeriodSeconds, 30); grace <= worst {
					t.Errorf("%s: terminationGracePeriodSeconds %d, but stopping may take %d s (drain %d + RPCs %s + relay flush %d + trace flush %d)",
						n, grace, worst, drain, cfg.ShutdownTimeout, relayFlush, traceFlush)
				}
			}
		})
	}
	// The timeout has one place, which the grace period follows.
	_, err = render(t, map[string]any{"services": map[string]any{"orders": map[string]any{"replicas": 1, "env": map[string]any{"SWITCHYARD_SHUTDOWN_TIMEOUT": "60s"}}}})
	if err == nil || !strings.Contains(err.Error(), "set service.shutdown.timeoutSeconds instead") {
		t.Errorf("services.orders.env.SWITCHYARD_SHUTDOWN_TIMEOUT rendered (error %v): it would outlast the grace period unseen", err)
	}
}

// Each service's traces carry the version of its image (service.version,
// from SWITCHYARD_VERSION: the images are built without VCS information, so
// the binary itself says "dev"): the image's tag, or the chart's appVersion
// for an image pinned by digest alone.
func TestServiceVersionIsTheImageTag(t *testing.T) {
	ch, err := loader.Load(chartPath)
	if err != nil {
		t.Fatal(err)
	}
	const digest = "@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"
	for _, tc := range []struct {
		name   string
		values map[string]any
		want   map[string]string // by service; the rest want other
		other  string
	}{
		{"defaults", nil, nil, "0.1.0"},
		{"image.tag", map[string]any{"image": map[string]any{"tag": "2.3.4"}}, nil, "2.3.4"},
		{"one image of a registry with a port, tag and digest", map[string]any{"services": map[string]any{"orders": map[string]any{"replicas": 1,
			"image": "registry.local:5000/team/switchyard-orders:abc123" + digest}}}, map[string]string{"orders": "abc123"}, "0.1.0"},
		{"one image by digest alone", map[string]any{"image": map[string]any{"tag": "2.3.4"}, "services": map[string]any{"orders": map[string]any{"replicas": 1,
			"image": "registry.local:5000/switchyard-orders" + digest}}}, map[string]string{"orders": ch.Metadata.AppVersion}, "2.3.4"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			o := mustRender(t, tc.values)
			for _, n := range serviceNames {
				want, ok := tc.want[n]
				if !ok {
					want = tc.other
				}
				c := deployment(t, o, n).Spec.Template.Spec.Containers[0]
				if got := envOf(c)["SWITCHYARD_VERSION"].Value; got != want {
					t.Errorf("%s (image %s): SWITCHYARD_VERSION=%q, want %q", n, c.Image, got, want)
				}
			}
		})
	}
}

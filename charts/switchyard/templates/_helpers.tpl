{{/* The services: the keys of .Values.services, in alphabetical order. */}}
{{- define "switchyard.serviceNames" -}}
{{- keys .Values.services | sortAlpha | join " " -}}
{{- end -}}

{{- define "switchyard.fullname" -}}
{{- printf "%s" .Release.Name | trunc 40 | trimSuffix "-" -}}
{{- end -}}

{{- define "switchyard.labels" -}}
app.kubernetes.io/part-of: switchyard
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{- define "switchyard.kafkaHost" -}}
{{ include "switchyard.fullname" . }}-kafka
{{- end -}}

{{/*
The bundled Kafka's address as every client reaches it and as the broker
advertises itself: <service>.<namespace>.svc, which resolves from any
namespace. KEDA's Kafka scaler runs in KEDA's own namespace, where the
short name would name a Service that does not exist there.
*/}}
{{- define "switchyard.kafkaAddress" -}}
{{ include "switchyard.kafkaHost" . }}.{{ .Release.Namespace }}.svc:9092
{{- end -}}

{{- define "switchyard.postgresHost" -}}
{{ include "switchyard.fullname" . }}-postgres
{{- end -}}

{{- define "switchyard.redisHost" -}}
{{ include "switchyard.fullname" . }}-redis
{{- end -}}

{{/* Whether the chart needs Redis: the transport or inventory's stock cache uses it. */}}
{{- define "switchyard.needsRedis" -}}
{{- if or (eq .Values.transport "redis") .Values.cache.enabled -}}true{{- end -}}
{{- end -}}

{{/* The Redis URL of database db ("0": the transport, "1": the stock cache). */}}
{{- define "switchyard.redisURL" -}}
{{- $db := index . 1 -}}
{{- with index . 0 -}}
{{- if .Values.redis.enabled -}}
redis://{{ include "switchyard.redisHost" . }}:6379/{{ $db }}
{{- else -}}
{{ trimSuffix "/" (required "redis.external.url is required when redis.enabled is false and Redis is needed" .Values.redis.external.url) }}/{{ $db }}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "switchyard.jaegerHost" -}}
{{ include "switchyard.fullname" . }}-jaeger
{{- end -}}

{{- define "switchyard.brokers" -}}
{{- if .Values.kafka.enabled -}}
{{ include "switchyard.kafkaAddress" . }}
{{- else -}}
{{ required "kafka.external.brokers is required when kafka.enabled is false" .Values.kafka.external.brokers }}
{{- end -}}
{{- end -}}

{{/*
The OTLP endpoint: the bundled Jaeger's receiver for tracing.protocol
(4317 for grpc, 4318 for http/protobuf: an HTTP exporter's POST to the
gRPC port fails), or tracing.endpoint.
*/}}
{{- define "switchyard.otlpEndpoint" -}}
{{- if .Values.jaeger.enabled -}}
http://{{ include "switchyard.jaegerHost" . }}:{{ eq .Values.tracing.protocol "http/protobuf" | ternary 4318 4317 }}
{{- else -}}
{{ required "tracing.endpoint is required when tracing is enabled and jaeger.enabled is false" .Values.tracing.endpoint }}
{{- end -}}
{{- end -}}

{{/*
The seconds a service pod waits after it is told to stop before its
process gets SIGTERM (a preStop sleep; 0 when the cluster has no sleep
action, before Kubernetes 1.30): meanwhile the endpoints controller and
kube-proxy stop sending it new connections, which the process, once
stopping, would refuse.
*/}}
{{- define "switchyard.drainSeconds" -}}
{{- if semverCompare ">=1.30.0-0" .Capabilities.KubeVersion.Version -}}
{{- .Values.service.shutdown.drainSeconds | int -}}
{{- else -}}0{{- end -}}
{{- end -}}

{{/*
terminationGracePeriodSeconds of a service pod: longer than its worst-case
stop, in platform/service's order, so that the kubelet never SIGKILLs it:
the drain (preStop), in-flight RPCs (SWITCHYARD_SHUTDOWN_TIMEOUT,
service.shutdown.timeoutSeconds), then the outbox relay's wait for the
broker's acknowledgements (relay.Config.ShutdownTimeout, 10 s, which
platform/service leaves at its default) while the consumers leave their
groups, then the trace flush (5 s in service.Main), plus 5 s for the
consumers' and the transport's close. deploy's
TestTerminationGraceCoversShutdown reads the 10 and 5 from the platform's
source.
*/}}
{{- define "switchyard.terminationGrace" -}}
{{- $relayFlush := 10 -}}
{{- $traceFlush := 5 -}}
{{- $close := 5 -}}
{{- add (include "switchyard.drainSeconds" . | int) .Values.service.shutdown.timeoutSeconds $relayFlush $traceFlush $close -}}
{{- end -}}

{{- define "switchyard.restrictedPod" -}}
runAsNonRoot: true
runAsUser: 65532
runAsGroup: 65532
seccompProfile:
  type: RuntimeDefault
{{- end -}}

{{- define "switchyard.restrictedContainer" -}}
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
capabilities:
  drop: ["ALL"]
{{- end -}}

{{/*
A memory or storage quantity ("512Mi", "1Gi", "300M", "268435456") in whole MiB, for the
sizing checks below; fails on a form it cannot read rather than guessing.
*/}}
{{- define "switchyard.mebibytes" -}}
{{- $q := toString . -}}
{{- $n := regexFind "^[0-9]+" $q | int64 -}}
{{- $unit := trimPrefix (regexFind "^[0-9]+" $q) $q -}}
{{- if eq $unit "Ti" }}{{ mul $n 1048576 }}
{{- else if eq $unit "Gi" }}{{ mul $n 1024 }}
{{- else if eq $unit "Mi" }}{{ $n }}
{{- else if eq $unit "Ki" }}{{ div $n 1024 }}
{{- else if eq $unit "G" }}{{ div (mul $n 1000000000) 1048576 }}
{{- else if eq $unit "M" }}{{ div (mul $n 1000000) 1048576 }}
{{- else if eq $unit "" }}{{ div $n 1048576 }}
{{- else }}{{ fail (printf "cannot read the memory quantity %q: use Mi or Gi" $q) }}
{{- end -}}
{{- end -}}

{{/*
The PostgreSQL connections the services may open at once: per pod, its pool
(service.database.maxConns), the watch streams' pool
(service.database.watchConns) and its LISTEN connection, the readiness
probe's own connection, and 2 that the outbox relay opens outside the pools
(its lock or drain connection and a short-lived setup one; the replication
connection is a WAL sender, counted by max_wal_senders).
*/}}
{{- define "switchyard.podConnections" -}}
{{- add .Values.service.database.maxConns .Values.service.database.watchConns 4 -}}
{{- end -}}

{{- define "switchyard.serviceConnections" -}}
{{- $total := 0 -}}
{{- range $name := splitList " " (include "switchyard.serviceNames" .) -}}
{{- $total = add $total (mul (include "switchyard.maxReplicas" (list $ $name) | int) (include "switchyard.podConnections" $ | int)) -}}
{{- end -}}
{{- $total -}}
{{- end -}}

{{/* The service pods, each of which may hold a WAL sender for its relay. */}}
{{- define "switchyard.servicePods" -}}
{{- $total := 0 -}}
{{- range $name := splitList " " (include "switchyard.serviceNames" .) -}}
{{- $total = add $total (include "switchyard.maxReplicas" (list $ $name) | int) -}}
{{- end -}}
{{- $total -}}
{{- end -}}

{{/*
Whether the chart scales analytics (an HPA or, with keda.enabled, a KEDA
ScaledObject) rather than setting its replicas.
*/}}
{{- define "switchyard.analyticsAutoscaled" -}}
{{- if .Values.analytics.autoscaling.enabled -}}true{{- end -}}
{{- end -}}

{{/*
The most pods service (list ctx name) may run: its replicas, or for an
autoscaled analytics its maxReplicas. The connection and WAL sender budgets
are sized for it.
*/}}
{{- define "switchyard.maxReplicas" -}}
{{- $ctx := index . 0 -}}
{{- $name := index . 1 -}}
{{- if and (eq $name "analytics") (include "switchyard.analyticsAutoscaled" $ctx) -}}
{{- $ctx.Values.analytics.autoscaling.maxReplicas -}}
{{- else -}}
{{- (index $ctx.Values.services $name).replicas -}}
{{- end -}}
{{- end -}}

{{/*
The fewest pods service (list ctx name) runs: what decides whether it gets a
PodDisruptionBudget (minAvailable 1 on a single pod would block every node
drain).
*/}}
{{- define "switchyard.minReplicas" -}}
{{- $ctx := index . 0 -}}
{{- $name := index . 1 -}}
{{- if and (eq $name "analytics") (include "switchyard.analyticsAutoscaled" $ctx) -}}
{{- $ctx.Values.analytics.autoscaling.minReplicas -}}
{{- else -}}
{{- (index $ctx.Values.services $name).replicas -}}
{{- end -}}
{{- end -}}

{{/*
Refuses analytics settings the schema cannot see across keys. The
partition ceiling: analytics' instances share one consumer group, and a
group gives each partition to one member, so past service.topicPartitions
an instance gets no partition and only costs a pod and its connections.
*/}}
{{- define "switchyard.checkAnalytics" -}}
{{- $a := .Values.analytics.autoscaling -}}
{{- $partitions := .Values.service.topicPartitions | int -}}
{{- if include "switchyard.analyticsAutoscaled" . -}}
{{- if gt ($a.maxReplicas | int) $partitions -}}
{{- fail (printf "analytics.autoscaling.maxReplicas=%d exceeds service.topicPartitions=%d: analytics' instances share one consumer group, which gives each partition to one instance, so instances past the partition count get no work. Lower maxReplicas or raise service.topicPartitions (before the topics exist)" ($a.maxReplicas | int) $partitions) -}}
{{- end -}}
{{- if gt ($a.minReplicas | int) ($a.maxReplicas | int) -}}
{{- fail (printf "analytics.autoscaling.minReplicas=%d exceeds maxReplicas=%d" ($a.minReplicas | int) ($a.maxReplicas | int)) -}}
{{- end -}}
{{- if and $a.keda.enabled (eq .Values.transport "redis") -}}
{{- fail "analytics.autoscaling.keda.enabled needs transport=kafka: the Redis transport keeps one stream per partition with leases of its own, which KEDA's redis-streams scaler cannot read as the group's lag. Use the CPU HPA (analytics.autoscaling.keda.enabled=false) with transport=redis" -}}
{{- end -}}
{{- $svc := .Values.services.analytics -}}
{{- $resources := $svc.resources | default .Values.service.resources -}}
{{- if and (not $a.keda.enabled) (not (and $resources.requests $resources.requests.cpu)) -}}
{{- fail "the analytics HPA scales on CPU utilization, a percentage of the pods' CPU request: set services.analytics.resources.requests.cpu (or service.resources.requests.cpu)" -}}
{{- end -}}
{{- else -}}
{{- if $a.keda.enabled -}}
{{- fail "analytics.autoscaling.keda.enabled needs analytics.autoscaling.enabled=true (KEDA is one way of autoscaling, in place of the CPU HPA)" -}}
{{- end -}}
{{- if gt (.Values.services.analytics.replicas | int) $partitions -}}
{{- fail (printf "services.analytics.replicas=%d exceeds service.topicPartitions=%d: analytics' instances share one consumer group, which gives each partition to one instance, so instances past the partition count get no work. Lower the replicas or raise service.topicPartitions (before the topics exist)" (.Values.services.analytics.replicas | int) $partitions) -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/*
max_connections: the services' connections plus 10 for everything else
(PostgreSQL's 3 superuser-reserved connections, the role reconciler, an
operator's psql, a migration run by hand), or postgresql.maxConnections when
set, which must then cover that sum.
*/}}
{{- define "switchyard.maxConnections" -}}
{{- $need := add (include "switchyard.serviceConnections" . | int) 10 -}}
{{- $set := .Values.postgresql.maxConnections | int -}}
{{- if and $set (lt $set $need) -}}
{{- fail (printf "postgresql.maxConnections=%d cannot fit the services: %d pods x %d connections (service.database.maxConns %d + watchConns %d + 1 LISTEN + 1 readiness probe + 2 relay) + 10 reserved = %d; raise it or lower the pool sizes or replicas" $set (include "switchyard.servicePods" . | int) (include "switchyard.podConnections" . | int) (.Values.service.database.maxConns | int) (.Values.service.database.watchConns | int) $need) -}}
{{- end -}}
{{- max $set $need -}}
{{- end -}}

{{/*
The chart's generated database passwords, base64: the one in the cluster
when there is one (lookup), otherwise a new random one, generated once per
rendering and shared by every template that needs it (the Secret, and the
checksum that restarts a service's pods when its password changes).
*/}}
{{- define "switchyard.dbPassword" -}}
{{- $ctx := index . 0 -}}
{{- $name := index . 1 -}}
{{- if not (hasKey $ctx.Values "__switchyardPasswords") -}}
{{- $_ := set $ctx.Values "__switchyardPasswords" dict -}}
{{- end -}}
{{- $cache := index $ctx.Values "__switchyardPasswords" -}}
{{- if not (hasKey $cache $name) -}}
{{- $existing := lookup "v1" "Secret" $ctx.Release.Namespace (printf "%s-postgres-%s" (include "switchyard.fullname" $ctx) $name) -}}
{{- if and $existing $existing.data (index $existing.data "password") -}}
{{- $_ := set $cache $name (index $existing.data "password") -}}
{{- else -}}
{{- $_ := set $cache $name (randAlphaNum 32 | b64enc) -}}
{{- end -}}
{{- end -}}
{{- index $cache $name -}}
{{- end -}}

{{/*
Fails when a StatefulSet already in the cluster was created with another
volume size: volumeClaimTemplates cannot change, so Kubernetes would refuse
the upgrade with a message that does not say what to do.
*/}}
{{- define "switchyard.storageGuard" -}}
{{- $ctx := index . 0 -}}
{{- $sts := index . 1 -}}
{{- $key := index . 2 -}}
{{- $want := index . 3 -}}
{{- $existing := lookup "apps/v1" "StatefulSet" $ctx.Release.Namespace $sts -}}
{{- if $existing -}}
{{- range $existing.spec.volumeClaimTemplates -}}
{{- $have := .spec.resources.requests.storage -}}
{{- if and (eq .metadata.name "data") (ne (toString $have) (toString $want)) -}}
{{- fail (printf "%s cannot change after install: the StatefulSet %s was created with %s (volume claim templates are immutable). Set %s back to %s; to grow the volume, resize the PersistentVolumeClaim data-%s-0 itself if its StorageClass allows expansion (see the README, Run on Kubernetes)" $key $sts $have $key $have $sts) -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- end -}}

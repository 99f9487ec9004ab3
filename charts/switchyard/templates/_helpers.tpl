{{/* The five services, in a fixed order. */}}
{{- define "switchyard.serviceNames" -}}
customers orders inventory payments notifications
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
{{ include "switchyard.kafkaHost" . }}:9092
{{- else -}}
{{ required "kafka.external.brokers is required when kafka.enabled is false" .Values.kafka.external.brokers }}
{{- end -}}
{{- end -}}

{{- define "switchyard.otlpEndpoint" -}}
{{- if .Values.jaeger.enabled -}}
http://{{ include "switchyard.jaegerHost" . }}:4317
{{- else -}}
{{ required "tracing.endpoint is required when tracing is enabled and jaeger.enabled is false" .Values.tracing.endpoint }}
{{- end -}}
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

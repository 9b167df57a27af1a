{{/* The services, in pipeline order. */}}
{{- define "surge.services" -}}
ingest partitioner batcher sink
{{- end -}}

{{- define "surge.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 50 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 50 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{/* Labels every object carries. */}}
{{- define "surge.labels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{/* The labels selecting one service's pods; call with (list $ "ingest"). */}}
{{- define "surge.selector" -}}
{{- $ := index . 0 -}}
app.kubernetes.io/name: {{ $.Chart.Name }}
app.kubernetes.io/instance: {{ $.Release.Name }}
app.kubernetes.io/component: {{ index . 1 }}
{{- end -}}

{{- define "surge.secretName" -}}
{{- if .Values.secrets.create -}}
{{- include "surge.fullname" . -}}
{{- else -}}
{{- required "secrets.existingSecret: name a Secret with nats-password, clickhouse-password and ingest-api-keys, or set secrets.create" .Values.secrets.existingSecret -}}
{{- end -}}
{{- end -}}

{{/* The objects' base name: Spegel's, so that its selectors, dashboards and an
in-place `helm upgrade` of a Spegel release work; or nameOverride. */}}
{{- define "mirror.name" -}}
{{- default "spegel" .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Fully qualified app name; the release name alone when it already contains the chart name. */}}
{{- define "mirror.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default "spegel" .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "mirror.namespace" -}}
{{- default .Release.Namespace .Values.namespaceOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "mirror.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "mirror.labels" -}}
helm.sh/chart: {{ include "mirror.chart" . }}
{{ include "mirror.selectorLabels" . }}
{{- if .Chart.AppVersion }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
{{- end }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{- define "mirror.selectorLabels" -}}
app.kubernetes.io/name: {{ include "mirror.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "mirror.serviceAccountName" -}}
{{- default (include "mirror.fullname" .) .Values.serviceAccount.name }}
{{- end }}

{{- define "mirror.image" -}}
{{- if .Values.image.digest }}
{{- .Values.image.repository }}@{{ .Values.image.digest }}
{{- else }}
{{- .Values.image.repository }}:{{ .Values.image.tag | default .Chart.AppVersion }}
{{- end }}
{{- end }}

{{/* The NODE_IP variable: the override, else the node's address from the downward API. */}}
{{- define "mirror.nodeIpEnv" -}}
- name: NODE_IP
{{- if .Values.service.registry.nodeIp }}
  value: {{ .Values.service.registry.nodeIp | quote }}
{{- else }}
  valueFrom:
    fieldRef:
      fieldPath: status.hostIP
{{- end }}
{{- end }}

{{/* The top-level alias (the seed's `--set mirrorResolveTimeout=50ms`) wins over spegel.*. */}}
{{- define "mirror.resolveTimeout" -}}
{{- .Values.mirrorResolveTimeout | default .Values.spegel.mirrorResolveTimeout }}
{{- end }}

{{/* The registry's host port, or nothing in the node-port-only layout (see values.yaml):
hostPort 0, hostPort equal to nodePort (Spegel main's values), or PreferSameNode asked. */}}
{{- define "mirror.hostPort" -}}
{{- $registry := .Values.service.registry }}
{{- if and $registry.hostPort (ne (int $registry.hostPort) (int $registry.nodePort)) (not $registry.usePreferSameNodeTrafficDistribution) }}
{{- int $registry.hostPort }}
{{- end }}
{{- end }}

{{/* spegel.persistence, with the keys of its deprecated alias spegel.dataDir on top, as JSON. */}}
{{- define "mirror.persistence" -}}
{{- $persistence := deepCopy .Values.spegel.persistence }}
{{- range $key, $value := .Values.spegel.dataDir | default dict }}
{{- $_ := set $persistence $key $value }}
{{- end }}
{{- toJson $persistence }}
{{- end }}

{{/* The Secret holding the DHT's cluster key: the one named, or the chart's own. */}}
{{- define "mirror.routerKeySecret" -}}
{{- .Values.routerKey.existingSecret | default (printf "%s-router-key" (include "mirror.fullname" .)) }}
{{- end }}

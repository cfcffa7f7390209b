{{/*
Names and labels shared by every object of the chart.
*/}}
{{- define "coffer.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 40 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 40 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "coffer.meta" -}}{{ include "coffer.fullname" . }}-meta{{- end -}}
{{- define "coffer.metaHeadless" -}}{{ include "coffer.fullname" . }}-meta-hl{{- end -}}

{{- define "coffer.labels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{- define "coffer.selector" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "coffer.image" -}}{{ .Values.image.repository }}:{{ .Values.image.tag }}{{- end -}}

{{/* The cluster domain suffix of in-cluster DNS names. */}}
{{- define "coffer.svcSuffix" -}}{{ .Release.Namespace }}.svc.cluster.local{{- end -}}

{{/* Every voter's gRPC address, comma-separated: storage nodes and clients follow the leader among them. */}}
{{- define "coffer.metaEndpoints" -}}
{{- $root := . -}}
{{- $eps := list -}}
{{- range $i := until (int .Values.metadata.replicas) -}}
{{- $eps = append $eps (printf "%s-%d.%s.%s:%d" (include "coffer.meta" $root) $i (include "coffer.metaHeadless" $root) (include "coffer.svcSuffix" $root) (int $root.Values.ports.metaGrpc)) -}}
{{- end -}}
{{- join "," $eps -}}
{{- end -}}

{{/* The Secret holding the metadata voters' certificate. */}}
{{- define "coffer.metaTlsSecret" -}}
{{- if .Values.tls.certManager.enabled -}}{{ include "coffer.meta" . }}-tls{{- else -}}{{ required "tls.existingSecrets.meta is required when tls.certManager.enabled is false" .Values.tls.existingSecrets.meta }}{{- end -}}
{{- end -}}

{{- define "coffer.storageTlsSecret" -}}
{{- if .Values.tls.certManager.enabled -}}{{ include "coffer.fullname" . }}-storage-tls{{- else -}}{{ required "tls.existingSecrets.storage is required when tls.certManager.enabled is false" .Values.tls.existingSecrets.storage }}{{- end -}}
{{- end -}}

{{/* Container security context and the volumes every pod mounts. */}}
{{- define "coffer.containerSecurity" -}}
{{ toYaml .Values.securityContext }}
{{- end -}}

{{/* Names and labels shared by every template. */}}

{{- define "devicelet.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* The release's objects are named this; cluster-scoped ones too, so two releases never clash. */}}
{{- define "devicelet.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else if contains (include "devicelet.name" .) .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name (include "devicelet.name" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "devicelet.selectorLabels" -}}
app.kubernetes.io/name: {{ include "devicelet.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "devicelet.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{ include "devicelet.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end -}}

{{- define "devicelet.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "devicelet.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{/* devicelet's state (ConfigMaps, the leader Lease, the stored serving certificate) lives here. */}}
{{- define "devicelet.stateNamespace" -}}
{{- .Release.Namespace -}}
{{- end -}}

{{/* The leader-election Lease, in the state namespace. */}}
{{- define "devicelet.leaseName" -}}
{{- default (include "devicelet.fullname" .) .Values.leaderElection.leaseName -}}
{{- end -}}

{{/*
The prefix of the shard member and shard Leases (`<prefix>-member-<pod>`, `<prefix>-shard-<i>`), in
the state namespace: a DNS label of at most 40 characters. Empty: the release's full name, dots made
dashes and cut to 40, so two releases in one namespace never share Leases.
*/}}
{{- define "devicelet.shardLeasePrefix" -}}
{{- default (include "devicelet.fullname" . | replace "." "-" | trunc 40 | trimSuffix "-") .Values.sharding.leasePrefix -}}
{{- end -}}

{{/*
The Secret holding the kubelet API's serving certificate, in the state namespace: for
kubeletApi.tls.source csr the Secret devicelet writes (create, update); for certManager the one
cert-manager issues into and for secret the given one (devicelet only reads them: get).
*/}}
{{- define "devicelet.kubeletTlsSecretName" -}}
{{- $tls := .Values.kubeletApi.tls -}}
{{- if eq $tls.source "csr" -}}
{{- default (printf "%s-kubelet-serving" (include "devicelet.fullname" .)) $tls.csr.secretName -}}
{{- else if eq $tls.source "certManager" -}}
{{- default (printf "%s-kubelet-tls" (include "devicelet.fullname" .)) $tls.certManager.secretName -}}
{{- else -}}
{{- required "kubeletApi.tls.secret.name is required when kubeletApi.tls.source is secret" $tls.secret.name -}}
{{- end -}}
{{- end -}}

{{/*
The devicelet configuration file (docs/configuration.md), rendered from values: the user's
`config`, with the keys that must agree with the Deployment set by the chart on top (health and
metrics ports, the kubelet API, leader election, sharding when enabled, the state namespace, and
for the MQTT provider the broker with the paths its credential and TLS Secrets are mounted at).
*/}}

{{/* Where the broker's Secrets are mounted; the rendered config names files under them. */}}
{{- define "devicelet.brokerCredentialsDir" -}}/var/run/secrets/devicelet/broker{{- end -}}
{{- define "devicelet.brokerTlsDir" -}}/var/run/secrets/devicelet/broker-tls{{- end -}}

{{/* The provider type: config.provider.type, else mqtt. */}}
{{- define "devicelet.providerType" -}}
{{- dig "provider" "type" "mqtt" (.Values.config | default dict) -}}
{{- end -}}

{{/* Whether the MQTT provider's broker connection uses TLS (mqtts:// or wss://). */}}
{{- define "devicelet.brokerUsesTls" -}}
{{- if regexMatch "^(mqtts|wss)://" .Values.broker.url -}}true{{- end -}}
{{- end -}}

{{/* The Secret the broker password is mounted from ("" when there is no password). */}}
{{- define "devicelet.brokerCredentialsSecret" -}}
{{- $c := .Values.broker.credentials -}}
{{- if $c.existingSecret -}}
{{- $c.existingSecret -}}
{{- else if $c.password -}}
{{- printf "%s-broker" (include "devicelet.fullname" .) -}}
{{- end -}}
{{- end -}}

{{/*
The broker TLS files as a JSON list of {key, path}: the Secret key and the file name it is mounted
as. Empty when neither an existing Secret nor PEM values are given.
*/}}
{{- define "devicelet.brokerTlsFiles" -}}
{{- $t := .Values.broker.tls -}}
{{- $files := list -}}
{{- if $t.existingSecret -}}
{{- if $t.caKey }}{{ $files = append $files (dict "key" $t.caKey "path" "ca.crt" "field" "ca") }}{{ end -}}
{{- if $t.certKey }}{{ $files = append $files (dict "key" $t.certKey "path" "tls.crt" "field" "cert") }}{{ end -}}
{{- if $t.keyKey }}{{ $files = append $files (dict "key" $t.keyKey "path" "tls.key" "field" "key") }}{{ end -}}
{{- else -}}
{{- if $t.ca }}{{ $files = append $files (dict "key" "ca.crt" "path" "ca.crt" "field" "ca") }}{{ end -}}
{{- if $t.cert }}{{ $files = append $files (dict "key" "tls.crt" "path" "tls.crt" "field" "cert") }}{{ end -}}
{{- if $t.key }}{{ $files = append $files (dict "key" "tls.key" "path" "tls.key" "field" "key") }}{{ end -}}
{{- end -}}
{{- toJson $files -}}
{{- end -}}

{{- define "devicelet.brokerTlsSecret" -}}
{{- if .Values.broker.tls.existingSecret -}}
{{- .Values.broker.tls.existingSecret -}}
{{- else if ne (include "devicelet.brokerTlsFiles" .) "[]" -}}
{{- printf "%s-broker-tls" (include "devicelet.fullname" .) -}}
{{- end -}}
{{- end -}}

{{/* provider.config of the MQTT provider: the user's, with the broker from values. */}}
{{- define "devicelet.mqttProviderConfig" -}}
{{- $v := .Values -}}
{{- $config := deepCopy (dig "provider" "config" dict ($v.config | default dict)) -}}
{{- $userBroker := deepCopy (dig "broker" dict $config) -}}
{{- range $k := list "url" "protocolVersion" "clientId" "username" "passwordFile" "tls" -}}
{{- if hasKey $userBroker $k -}}
{{- fail (printf "config.provider.config.broker.%s is set by the chart: use the broker values (broker.url, broker.protocolVersion, broker.clientId, broker.credentials, broker.tls) instead" $k) -}}
{{- end -}}
{{- end -}}
{{- $broker := dict "url" $v.broker.url "protocolVersion" $v.broker.protocolVersion "clientId" $v.broker.clientId -}}
{{- if $v.broker.credentials.username -}}
{{- $_ := set $broker "username" $v.broker.credentials.username -}}
{{- end -}}
{{- if include "devicelet.brokerCredentialsSecret" . -}}
{{- $_ := set $broker "passwordFile" (printf "%s/password" (include "devicelet.brokerCredentialsDir" .)) -}}
{{- end -}}
{{- $tlsFiles := include "devicelet.brokerTlsFiles" . | fromJsonArray -}}
{{- $t := $v.broker.tls -}}
{{- if include "devicelet.brokerUsesTls" . -}}
{{- $tls := dict "rejectUnauthorized" $t.rejectUnauthorized -}}
{{- range $f := $tlsFiles -}}
{{- $_ := set $tls $f.field (printf "%s/%s" (include "devicelet.brokerTlsDir" $) $f.path) -}}
{{- end -}}
{{- if $t.servername -}}
{{- $_ := set $tls "servername" $t.servername -}}
{{- end -}}
{{- $_ := set $broker "tls" $tls -}}
{{- else if or $tlsFiles $t.servername (not $t.rejectUnauthorized) -}}
{{- fail (printf "broker.tls is set, but broker.url %q is a plain URL where TLS is never used: use mqtts:// or wss://, or remove broker.tls" $v.broker.url) -}}
{{- end -}}
{{- $_ := set $config "broker" (mergeOverwrite $userBroker $broker) -}}
{{- $devices := deepCopy (dig "devices" dict $config) -}}
{{- if not (hasKey $devices "allow") -}}
{{- $_ := set $devices "allow" $v.devices.allow -}}
{{- end -}}
{{- $_ := set $config "devices" $devices -}}
{{- toJson $config -}}
{{- end -}}

{{/* kubelet: the kubelet API section, from kubeletApi. */}}
{{- define "devicelet.kubeletConfig" -}}
{{- $k := .Values.kubeletApi -}}
{{- $tls := dict -}}
{{- if eq $k.tls.source "csr" -}}
{{- $tls = dict "source" "csr" "csrApprove" $k.tls.csr.approve "csrExpirationSeconds" $k.tls.csr.expirationSeconds "csrSecretName" (include "devicelet.kubeletTlsSecretName" .) -}}
{{- else -}}
{{- $tls = dict "source" "secret" "secretName" (include "devicelet.kubeletTlsSecretName" .) -}}
{{- end -}}
{{- $kubelet := dict "serve" $k.enabled "port" $k.port "portCount" $k.portCount "tls" $tls -}}
{{- if $k.address -}}
{{- $_ := set $kubelet "address" $k.address -}}
{{- end -}}
{{- if $k.auth -}}
{{- $_ := set $kubelet "auth" $k.auth -}}
{{- end -}}
{{- toJson $kubelet -}}
{{- end -}}

{{- define "devicelet.config" -}}
{{- $v := .Values -}}
{{- if and $v.sharding.enabled $v.leaderElection.enabled -}}
{{- fail "sharding.enabled and leaderElection.enabled are exclusive: sharded replicas coordinate on their own Leases, so set leaderElection.enabled=false (its timings still apply to the shard Leases)" -}}
{{- end -}}
{{- if and (gt (int $v.replicaCount) 1) (not $v.leaderElection.enabled) (not $v.sharding.enabled) -}}
{{- fail "replicaCount > 1 needs leaderElection.enabled or sharding.enabled: two devicelets without a leader or shards fight over nodes, pods and the broker session" -}}
{{- end -}}
{{- $config := deepCopy ($v.config | default dict) -}}
{{- $provider := deepCopy (dig "provider" dict $config) -}}
{{- $type := include "devicelet.providerType" . -}}
{{- $_ := set $provider "type" $type -}}
{{- if eq $type "mqtt" -}}
{{- $_ := set $provider "config" (include "devicelet.mqttProviderConfig" . | fromJson) -}}
{{- end -}}
{{- $_ := set $config "provider" $provider -}}
{{- $_ := set $config "kubelet" (include "devicelet.kubeletConfig" . | fromJson) -}}
{{- $_ := set $config "health" (dict "serve" true "bindAddress" "0.0.0.0" "port" $v.health.port) -}}
{{- $_ := set $config "metrics" (dict "serve" $v.metrics.enabled "bindAddress" "0.0.0.0" "port" $v.metrics.port) -}}
{{- $le := $v.leaderElection -}}
{{- $_ := set $config "leaderElection" (dict "enabled" $le.enabled "leaseName" (include "devicelet.leaseName" .) "leaseDurationSeconds" $le.leaseDurationSeconds "renewDeadlineSeconds" $le.renewDeadlineSeconds "retryPeriodSeconds" $le.retryPeriodSeconds) -}}
{{- if $v.sharding.enabled -}}
{{- $_ := set $config "sharding" (dict "enabled" true "shards" $v.sharding.shards "leasePrefix" (include "devicelet.shardLeasePrefix" .)) -}}
{{- end -}}
{{- $_ := set $config "state" (dict "namespace" (include "devicelet.stateNamespace" .)) -}}
{{- toYaml $config -}}
{{- end -}}

{{- /*
Names and labels. Every template takes the app chart's root context.
*/ -}}

{{- /* devstack-lib.base: the prefix of every object the library adds (<= 40 chars). */ -}}
{{- define "devstack-lib.base" -}}
{{- $cfg := include "devstack-lib.config" . | fromYaml -}}
{{- if $cfg.name -}}
{{- $cfg.name | trunc 40 | trimSuffix "-" -}}
{{- else if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 40 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 40 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- /* devstack-lib.service: the service name the agent routes by. */ -}}
{{- define "devstack-lib.service" -}}
{{- $cfg := include "devstack-lib.config" . | fromYaml -}}
{{- $cfg.service | default .Chart.Name -}}
{{- end -}}

{{- /* devstack-lib.image: the devstack image reference. */ -}}
{{- define "devstack-lib.image" -}}
{{- $cfg := include "devstack-lib.config" . | fromYaml -}}
{{- printf "%s:%s" $cfg.image.repository (toString $cfg.image.tag) -}}
{{- end -}}

{{- define "devstack-lib.tokenSecretName" -}}
{{- $cfg := include "devstack-lib.config" . | fromYaml -}}
{{- $cfg.token.existingSecret | default (printf "%s-devstack-token" (include "devstack-lib.base" .)) -}}
{{- end -}}

{{- define "devstack-lib.outputsConfigMapName" -}}
{{- $cfg := include "devstack-lib.config" . | fromYaml -}}
{{- $cfg.provision.outputs.configMap | default (printf "%s-devstack-aws" (include "devstack-lib.base" .)) -}}
{{- end -}}

{{- /* "true" when there is something to provision. */ -}}
{{- define "devstack-lib.provisioning" -}}
{{- $cfg := include "devstack-lib.config" . | fromYaml -}}
{{- if and $cfg.enabled $cfg.provision.enabled $cfg.aws -}}true{{- end -}}
{{- end -}}

{{- /*
devstack-lib.labels: the labels the agent routes by, for the app's Deployment,
pod template and Service metadata. Renders nothing when devstack is disabled.
The baseline (empty owner) carries no owner label. The app chart's own labels are
expected to carry app.kubernetes.io/managed-by already.
*/ -}}
{{- define "devstack-lib.labels" -}}
{{- $cfg := include "devstack-lib.config" . | fromYaml -}}
{{- if $cfg.enabled -}}
{{- $l := dict "devstack.dev/service" (include "devstack-lib.service" .) -}}
{{- if $cfg.owner -}}
{{- $_ := set $l "devstack.dev/owner" (toString $cfg.owner) -}}
{{- end -}}
{{- range $k, $v := $cfg.labels -}}
{{- $_ := set $l $k (toString $v) -}}
{{- end -}}
{{- toYaml $l -}}
{{- end -}}
{{- end -}}

{{- /*
devstack-lib.podLabels: devstack-lib.labels plus the label the sidecar's sync
Service selects on. For the pod template's labels only (never the selector).
*/ -}}
{{- define "devstack-lib.podLabels" -}}
{{- $cfg := include "devstack-lib.config" . | fromYaml -}}
{{- if $cfg.enabled -}}
{{- include "devstack-lib.labels" . }}
devstack.dev/sync: {{ include "devstack-lib.base" . | quote }}
{{- end -}}
{{- end -}}

{{- /* Labels on the objects the library itself creates. */ -}}
{{- define "devstack-lib.ownLabels" -}}
app.kubernetes.io/name: {{ .Chart.Name | quote }}
app.kubernetes.io/instance: {{ .Release.Name | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service | quote }}
app.kubernetes.io/part-of: devstack
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | quote }}
{{- end -}}

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

{{- /*
Every name below is <base> (<= 40 characters) plus a suffix of at most 22, so each
one is a valid object name and label value (<= 63): the Jobs' names also end up in
their pods' labels.
*/ -}}

{{- define "devstack-lib.outputsConfigMapName" -}}
{{- $cfg := include "devstack-lib.config" . | fromYaml -}}
{{- $cfg.provision.outputs.configMap | default (printf "%s-devstack-aws" (include "devstack-lib.base" .)) -}}
{{- end -}}

{{- /* The Secret that receives the secret outputs: the same name as the ConfigMap by default. */ -}}
{{- define "devstack-lib.outputsSecretName" -}}
{{- $cfg := include "devstack-lib.config" . | fromYaml -}}
{{- $cfg.provision.outputs.secret | default (printf "%s-devstack-aws" (include "devstack-lib.base" .)) -}}
{{- end -}}

{{- /* The hook's ServiceAccount, Role, RoleBinding and Secret; also the provisioning Job. */ -}}
{{- define "devstack-lib.provisionName" -}}
{{- printf "%s-devstack-provision" (include "devstack-lib.base" .) -}}
{{- end -}}

{{- /* The pre-delete Job. */ -}}
{{- define "devstack-lib.teardownName" -}}
{{- printf "%s-devstack-teardown" (include "devstack-lib.base" .) -}}
{{- end -}}

{{- /*
"true" when the provisioning hooks run: devstack and provisioning are enabled, even
when devstack.aws declares nothing (the pre-upgrade run then prunes what earlier
releases created, and the pre-delete hook still tears down).
*/ -}}
{{- define "devstack-lib.provisioning" -}}
{{- $cfg := include "devstack-lib.config" . | fromYaml -}}
{{- if and $cfg.enabled $cfg.provision.enabled -}}true{{- end -}}
{{- end -}}

{{- /*
devstack-lib.labels: the labels the agent routes by, for the app's Deployment,
pod template and Service metadata. Renders nothing when devstack is disabled.
The baseline (empty owner) carries no owner label; devstack.team adds devstack.dev/team
(usage attribution, docs/usage.md). The app chart's own labels are
expected to carry app.kubernetes.io/managed-by already.
*/ -}}
{{- define "devstack-lib.labels" -}}
{{- $cfg := include "devstack-lib.config" . | fromYaml -}}
{{- if $cfg.enabled -}}
{{- $l := dict "devstack.dev/service" (include "devstack-lib.service" .) -}}
{{- if $cfg.owner -}}
{{- $_ := set $l "devstack.dev/owner" (toString $cfg.owner) -}}
{{- end -}}
{{- if $cfg.team -}}
{{- $_ := set $l "devstack.dev/team" (toString $cfg.team) -}}
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
{{- if $cfg.sidecar.enabled }}
devstack.dev/sync: {{ include "devstack-lib.base" . | quote }}
{{- end }}
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

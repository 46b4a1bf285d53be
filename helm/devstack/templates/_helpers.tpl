{{- define "devstack.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "devstack.selectorLabels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: agent
{{- end -}}

{{- define "devstack.labels" -}}
{{ include "devstack.selectorLabels" . }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: devstack
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{- end -}}

{{- define "devstack.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- .Values.serviceAccount.name | default (include "devstack.fullname" .) -}}
{{- else -}}
{{- .Values.serviceAccount.name | default "default" -}}
{{- end -}}
{{- end -}}

{{- /* The namespaces the agent watches, as a list; empty list means all (cluster scope). */ -}}
{{- define "devstack.namespaces" -}}
{{- if eq .Values.scope "namespaced" -}}
{{- toJson (.Values.namespaces | default (list .Release.Namespace) | uniq) -}}
{{- else -}}
[]
{{- end -}}
{{- end -}}

{{- /* The Traefik CRD API groups the agent writes: traefik.io, plus traefik.containo.us for Traefik 2.x. */ -}}
{{- define "devstack.traefikGroups" -}}
{{- if hasPrefix "2." (toString .Values.traefikVersion) -}}
["traefik.io", "traefik.containo.us"]
{{- else -}}
["traefik.io"]
{{- end -}}
{{- end -}}

{{- /*
The rules the agent needs where it watches Services, each because the agent uses it:
- services get/list/watch: it watches Services to learn baselines and owners' copies;
- ingressroutes and middlewares, every write verb: it creates, patches and deletes the
  routes and header middlewares it owns (list/watch to resync after a restart).
*/ -}}
{{- define "devstack.routingRules" -}}
- apiGroups: [""]
  resources: [services]
  verbs: [get, list, watch]
- apiGroups: {{ include "devstack.traefikGroups" . }}
  resources: [ingressroutes, middlewares]
  verbs: [get, list, watch, create, update, patch, delete]
{{- end -}}

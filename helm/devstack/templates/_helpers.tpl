{{- define "devstack.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "devstack.selectorLabels" -}}
app.kubernetes.io/name: {{ .Chart.Name | quote }}
app.kubernetes.io/instance: {{ .Release.Name | quote }}
app.kubernetes.io/component: agent
{{- end -}}

{{- define "devstack.labels" -}}
{{ include "devstack.selectorLabels" . }}
app.kubernetes.io/managed-by: {{ .Release.Service | quote }}
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

{{- /*
The one Traefik CRD API group the agent writes, as devstack.core.routing.crd_group_for
picks it: traefik.io from Traefik 2.10 on, traefik.containo.us before ("2" is 2.0).
*/ -}}
{{- define "devstack.traefikGroup" -}}
{{- $parts := splitList "." (trimPrefix "v" (toString .Values.traefikVersion)) -}}
{{- $major := int (index $parts 0) -}}
{{- $minor := 0 -}}
{{- if gt (len $parts) 1 -}}{{- $minor = int (index $parts 1) -}}{{- end -}}
{{- if or (gt $major 2) (and (eq $major 2) (ge $minor 10)) -}}
traefik.io
{{- else -}}
traefik.containo.us
{{- end -}}
{{- end -}}

{{- /*
The rules the agent needs where it watches Services: exactly the calls it makes
(tests/cluster/test_rbac.py runs the agent and compares):
- services list/watch: its informers keep a cache of the Services it routes;
- pods and persistentvolumeclaims list/watch: usage attribution keeps the lifetimes
  of the owners' Pods, PVCs (and LoadBalancer Services); metrics.k8s.io pods list
  (with usage.actualUsage) samples their actual use where metrics-server runs;
- ingressroutes and middlewares list/watch (its caches), create, patch (merge patch)
  and delete; get only to tell, when a create meets an existing object, whether that
  object is its own;
- apps deployments list/watch: sleep (docs/sleep.md) keeps a cache of the copies'
  Deployments (replicas, last sync); deployments/scale patch: it scales an idle or
  expired copy to zero through the scale subresource, and nothing else of it.
*/ -}}
{{- define "devstack.routingRules" -}}
- apiGroups: [""]
  resources: [services, pods, persistentvolumeclaims]
  verbs: [list, watch]
{{- if .Values.usage.actualUsage }}
- apiGroups: [metrics.k8s.io]
  resources: [pods]
  verbs: [list]
{{- end }}
- apiGroups: [apps]
  resources: [deployments]
  verbs: [list, watch]
- apiGroups: [apps]
  resources: [deployments/scale]
  verbs: [patch]
- apiGroups: [{{ include "devstack.traefikGroup" . | quote }}]
  resources: [ingressroutes, middlewares]
  verbs: [get, list, watch, create, patch, delete]
{{- end -}}

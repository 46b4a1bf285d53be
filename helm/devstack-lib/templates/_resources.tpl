{{- /*
devstack-lib.resources: every standalone object the library adds, as YAML documents.
An app chart renders it from one template file:

  # templates/devstack.yaml
  {{ include "devstack-lib.resources" . }}

Renders nothing when devstack is disabled; with devstack.sidecar.enabled false, only
the provisioning hooks.
*/ -}}
{{- define "devstack-lib.resources" -}}
{{- $cfg := include "devstack-lib.config" . | fromYaml -}}
{{- if and $cfg.enabled $cfg.sidecar.enabled -}}
{{- include "devstack-lib.tokenSecret" . }}
{{- include "devstack-lib.syncService" . }}
{{- include "devstack-lib.ingressRoute" . }}
{{- include "devstack-lib.reloadConfigMap" . }}
{{- end -}}
{{- if $cfg.enabled -}}
{{- include "devstack-lib.provisionHooks" . }}
{{- end -}}
{{- end -}}

{{- /*
The token the sidecar checks. Generated once and kept across upgrades (read back with
`lookup`), or given as devstack.token.value, or an existing Secret
(devstack.token.existingSecret, which is then not created here). Only ever a Secret.
*/ -}}
{{- define "devstack-lib.tokenSecret" -}}
{{- $cfg := include "devstack-lib.config" . | fromYaml -}}
{{- if not $cfg.token.existingSecret }}
{{- $name := include "devstack-lib.tokenSecretName" . -}}
{{- $key := $cfg.token.key -}}
{{- $token := "" -}}
{{- if $cfg.token.value -}}
{{- $token = $cfg.token.value | b64enc -}}
{{- else -}}
{{- $existing := lookup "v1" "Secret" .Release.Namespace $name -}}
{{- if and $existing $existing.data (hasKey $existing.data $key) -}}
{{- $token = index $existing.data $key -}}
{{- else -}}
{{- $token = randAlphaNum 48 | b64enc -}}
{{- end -}}
{{- end }}
---
apiVersion: v1
kind: Secret
metadata:
  name: {{ $name | quote }}
  namespace: {{ .Release.Namespace | quote }}
  labels:
    {{- include "devstack-lib.ownLabels" . | nindent 4 }}
    devstack.dev/role: token
type: Opaque
data:
  {{ $key }}: {{ $token | quote }}
{{- end }}
{{- end -}}

{{- /* The Service in front of the sidecar's gRPC port (h2c). */ -}}
{{- define "devstack-lib.syncService" -}}
{{- $cfg := include "devstack-lib.config" . | fromYaml -}}
{{- $base := include "devstack-lib.base" . }}
---
apiVersion: v1
kind: Service
metadata:
  name: {{ printf "%s-devstack-sync" $base | quote }}
  namespace: {{ .Release.Namespace | quote }}
  labels:
    {{- include "devstack-lib.ownLabels" . | nindent 4 }}
    devstack.dev/role: sync
spec:
  type: ClusterIP
  selector:
    devstack.dev/sync: {{ $base | quote }}
  ports:
    - name: grpc
      port: {{ int $cfg.sidecar.port }}
      targetPort: devstack-sync
      protocol: TCP
      appProtocol: kubernetes.io/h2c
{{- end -}}

{{- /*
A Traefik IngressRoute that carries gRPC (h2c) to the sidecar, routed by Host, so that
`devstack connect --to <traefik>:<port> --authority <host>` reaches it without
`kubectl exec` or a port-forward.
*/ -}}
{{- define "devstack-lib.ingressRoute" -}}
{{- $cfg := include "devstack-lib.config" . | fromYaml -}}
{{- if $cfg.route.enabled }}
{{- $base := include "devstack-lib.base" . }}
---
apiVersion: {{ $cfg.route.apiVersion }}
kind: IngressRoute
metadata:
  name: {{ printf "%s-devstack-sync" $base | quote }}
  namespace: {{ .Release.Namespace | quote }}
  labels:
    {{- include "devstack-lib.ownLabels" . | nindent 4 }}
    devstack.dev/role: sync
spec:
  entryPoints:
    {{- toYaml $cfg.route.entryPoints | nindent 4 }}
  routes:
    - kind: Rule
      match: {{ printf "Host(`%s`)" (include "devstack-lib.syncHost" .) | quote }}
      services:
        - name: {{ printf "%s-devstack-sync" $base | quote }}
          port: {{ int $cfg.sidecar.port }}
          scheme: h2c
  {{- with $cfg.route.tls }}
  tls:
    {{- toYaml . | nindent 4 }}
  {{- end }}
{{- end }}
{{- end -}}

{{- /* The Host `devstack connect --authority` uses: route.host, else <base>-sync.<domain>. */ -}}
{{- define "devstack-lib.syncHost" -}}
{{- $cfg := include "devstack-lib.config" . | fromYaml -}}
{{- $cfg.route.host | default (printf "%s-sync.%s" (include "devstack-lib.base" .) $cfg.route.domain) -}}
{{- end -}}

{{- /* The reload rules file (--reload-config), when devstack.sidecar.reloadConfig is set. */ -}}
{{- define "devstack-lib.reloadConfigMap" -}}
{{- $cfg := include "devstack-lib.config" . | fromYaml -}}
{{- if $cfg.sidecar.reloadConfig }}
---
apiVersion: v1
kind: ConfigMap
metadata:
  name: {{ printf "%s-devstack-reload" (include "devstack-lib.base" .) | quote }}
  namespace: {{ .Release.Namespace | quote }}
  labels:
    {{- include "devstack-lib.ownLabels" . | nindent 4 }}
    devstack.dev/role: reload
data:
  rules.yaml: |
    {{- toYaml $cfg.sidecar.reloadConfig | nindent 4 }}
{{- end }}
{{- end -}}

{{- /*
Defaults for every key under `devstack:`. A library chart's own values.yaml is not
visible to the app chart, so the defaults live here and are merged under what the
app chart sets (the app chart's values win). Keep in step with values.schema.json.
*/ -}}
{{- define "devstack-lib.defaults" -}}
enabled: false
name: ""
service: ""
owner: ""
team: ""
labels: {}
image:
  repository: ghcr.io/devstack/devstack
  tag: "0.1.0"
  pullPolicy: IfNotPresent
imagePullSecrets: []
workspace:
  path: /app
  sizeLimit: ""
  medium: ""
  seed:
    enabled: true
    source: ""
    command: []
    securityContext: {}
    resources: {}
token:
  existingSecret: ""
  key: token
  value: ""
sidecar:
  enabled: true
  port: 7070
  mode: safe
  reload: none
  command: ""
  exec: ""
  signal:
    name: HUP
    processName: ""
    pidFile: ""
  reloadOn: []
  reloadDebounceMs: 100
  reloadConfig: {}
  owner: ""
  fileMode: ""
  dirMode: ""
  logFormat: json
  extraArgs: []
  env: []
  resources:
    requests:
      cpu: 10m
      memory: 64Mi
    limits:
      memory: 256Mi
  securityContext:
    runAsNonRoot: true
    allowPrivilegeEscalation: false
    readOnlyRootFilesystem: true
    capabilities:
      drop: [ALL]
route:
  enabled: true
  host: ""
  domain: localtest.me
  entryPoints: [web]
  apiVersion: traefik.io/v1alpha1
  tls: {}
readiness:
  path: ""
  port: 0
  initialDelaySeconds: 0
  periodSeconds: 5
  timeoutSeconds: 1
  failureThreshold: 3
  startTimeoutSeconds: 0
local:
  command: []
  dir: ""
  env: {}
  readyPath: /
  readyTimeoutSeconds: 60
test:
  command: []
  dir: ""
  env: {}
  timeoutSeconds: 0
build:
  image: ""
  context: ""
  dockerfile: ""
  builder: ""
  command: []
  args: {}
  values:
    repository: image.repository
    tag: image.tag
provision:
  enabled: true
  endpoint: http://localstack.localstack.svc.cluster.local:4566
  region: us-east-1
  credentials:
    existingSecret: ""
    accessKeyId: test
    secretAccessKey: test
  outputs:
    configMap: ""
    secret: ""
  prune: true
  teardown: true
  extraEnv: []
  extraEnvFrom: []
  extraVolumes: []
  extraVolumeMounts: []
  podLabels: {}
  podAnnotations: {}
  backoffLimit: 1
  activeDeadlineSeconds: 300
  resources: {}
  securityContext:
    runAsNonRoot: true
    allowPrivilegeEscalation: false
    readOnlyRootFilesystem: true
    capabilities:
      drop: [ALL]
aws: {}
{{- end -}}

{{- /*
devstack-lib.config: the merged `devstack:` settings as YAML; read it back with
`include "devstack-lib.config" . | fromYaml`. Takes the app chart's root context.
*/ -}}
{{- define "devstack-lib.config" -}}
{{- $defaults := include "devstack-lib.defaults" . | fromYaml -}}
{{- $given := deepCopy (.Values.devstack | default dict) -}}
{{- include "devstack-lib.overlay" (dict "into" $defaults "from" $given) -}}
{{- /* aws is a spec, not settings: taken as given, never merged with defaults */ -}}
{{- $_ := set $defaults "aws" ($given.aws | default dict) -}}
{{- toYaml $defaults -}}
{{- end -}}

{{- /*
devstack-lib.overlay: copy (dict "into" D "from" S) S over D in place, recursing into
maps. Unlike sprig's merge, an explicit false or "" in S wins over D.
*/ -}}
{{- define "devstack-lib.overlay" -}}
{{- $into := .into -}}
{{- range $k, $v := .from -}}
{{- if and (kindIs "map" $v) (kindIs "map" (get $into $k)) -}}
{{- include "devstack-lib.overlay" (dict "into" (get $into $k) "from" $v) -}}
{{- else -}}
{{- $_ := set $into $k $v -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- /* devstack-lib.enabled: "true" or "" */ -}}
{{- define "devstack-lib.enabled" -}}
{{- if and .Values.devstack .Values.devstack.enabled -}}true{{- end -}}
{{- end -}}

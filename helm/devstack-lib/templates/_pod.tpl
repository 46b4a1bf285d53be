{{- /*
Pod-level pieces an app chart includes in its Deployment. Each renders nothing when
devstack is disabled, so the app chart renders exactly as it would without devstack.
Use them with `with`, so that a key only appears when there is something under it:

  {{- with include "devstack-lib.initContainers" (dict "root" $ "image" $appImage) }}
  initContainers:
    {{- . | nindent 8 }}
  {{- end }}
*/ -}}

{{- /* Pod spec fields: `shareProcessNamespace: true` for the signal reload strategy. */ -}}
{{- define "devstack-lib.podSpec" -}}
{{- $cfg := include "devstack-lib.config" . | fromYaml -}}
{{- if and $cfg.enabled $cfg.sidecar.enabled (eq $cfg.sidecar.reload "signal") -}}
shareProcessNamespace: true
{{- end -}}
{{- end -}}

{{- /*
devstack-lib.initContainers: (dict "root" $ "image" APP_IMAGE). Seeds the shared
workspace from the app image, so that the first sync is incremental, with nothing
needed in the app image (distroless and scratch images work):

1. `devstack-tools` runs the devstack image and copies its static busybox
   (/opt/devstack/tools/busybox, from Debian's busybox-static) into an emptyDir;
2. `devstack-seed` runs the APP image and executes that busybox from the emptyDir:
   `busybox cp -a <source>/. /devstack-seed/` (exec form: no shell, no tar).

devstack.workspace.seed.command replaces both with one init container that runs
that command in the app image.
*/ -}}
{{- define "devstack-lib.initContainers" -}}
{{- $root := .root -}}
{{- $cfg := include "devstack-lib.config" $root | fromYaml -}}
{{- if and $cfg.enabled $cfg.sidecar.enabled $cfg.workspace.seed.enabled -}}
{{- $image := required "devstack-lib.initContainers needs the app image: (dict \"root\" $ \"image\" IMAGE)" .image -}}
{{- $source := $cfg.workspace.seed.source | default $cfg.workspace.path -}}
{{- $seed := $cfg.workspace.seed -}}
{{- if not $seed.command }}
- name: devstack-tools
  image: {{ include "devstack-lib.image" $root | quote }}
  imagePullPolicy: {{ $cfg.image.pullPolicy }}
  command: ["/opt/devstack/tools/busybox", "cp", "/opt/devstack/tools/busybox", "/devstack-tools/busybox"]
  volumeMounts:
    - name: devstack-tools
      mountPath: /devstack-tools
  {{- with $cfg.sidecar.securityContext }}
  securityContext:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with $seed.resources }}
  resources:
    {{- toYaml . | nindent 4 }}
  {{- end }}
{{- end }}
- name: devstack-seed
  image: {{ $image | quote }}
  command:
    {{- if $seed.command }}
    {{- toYaml $seed.command | nindent 4 }}
    {{- else }}
    {{- toYaml (list "/devstack-tools/busybox" "cp" "-a" (printf "%s/." (trimSuffix "/" $source)) "/devstack-seed/") | nindent 4 }}
    {{- end }}
  volumeMounts:
    - name: devstack-workspace
      mountPath: /devstack-seed
    {{- if not $seed.command }}
    - name: devstack-tools
      mountPath: /devstack-tools
      readOnly: true
    {{- end }}
  {{- with $seed.securityContext }}
  securityContext:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with $seed.resources }}
  resources:
    {{- toYaml . | nindent 4 }}
  {{- end }}
{{- end -}}
{{- end -}}

{{- /* devstack-lib.sidecarArgs: the `devstack sidecar` command line, as a YAML list. */ -}}
{{- define "devstack-lib.sidecarArgs" -}}
{{- $cfg := include "devstack-lib.config" . | fromYaml -}}
{{- $s := $cfg.sidecar -}}
{{- $args := list "sidecar" "--mode" $s.mode "--reload" $s.reload -}}
{{- if eq $s.reload "supervise" -}}
{{- $args = concat $args (list "--command" (required "devstack.sidecar.command is required when devstack.sidecar.reload is supervise" $s.command)) -}}
{{- end -}}
{{- if eq $s.reload "exec" -}}
{{- $args = concat $args (list "--exec" (required "devstack.sidecar.exec is required when devstack.sidecar.reload is exec" $s.exec)) -}}
{{- end -}}
{{- if eq $s.reload "signal" -}}
{{- $args = concat $args (list "--signal" $s.signal.name) -}}
{{- if $s.signal.pidFile -}}
{{- $args = concat $args (list "--pid-file" $s.signal.pidFile) -}}
{{- else -}}
{{- $args = concat $args (list "--process-name" (required "devstack.sidecar.signal.processName or .pidFile is required when devstack.sidecar.reload is signal" $s.signal.processName)) -}}
{{- end -}}
{{- end -}}
{{- range $s.reloadOn -}}
{{- $args = concat $args (list "--reload-on" .) -}}
{{- end -}}
{{- $args = concat $args (list "--reload-debounce-ms" (toString (int $s.reloadDebounceMs))) -}}
{{- if $s.reloadConfig -}}
{{- $args = concat $args (list "--reload-config" "/etc/devstack/reload/rules.yaml") -}}
{{- end -}}
{{- $r := $cfg.readiness -}}
{{- if and $r.path (eq $s.reload "supervise") -}}
{{- if not ($r.port | int) -}}{{- fail "devstack.readiness.port is required with devstack.readiness.path" -}}{{- end -}}
{{- $port := $r.port | int -}}
{{- $args = concat $args (list "--ready-url" (printf "http://127.0.0.1:%d%s" $port $r.path)) -}}
{{- if $r.startTimeoutSeconds -}}
{{- $args = concat $args (list "--ready-timeout" (toString $r.startTimeoutSeconds)) -}}
{{- end -}}
{{- end -}}
{{- if $s.owner -}}
{{- $args = concat $args (list "--owner" (toString $s.owner)) -}}
{{- end -}}
{{- if $s.fileMode -}}
{{- $args = concat $args (list "--file-mode" (toString $s.fileMode)) -}}
{{- end -}}
{{- if $s.dirMode -}}
{{- $args = concat $args (list "--dir-mode" (toString $s.dirMode)) -}}
{{- end -}}
{{- $args = concat $args $s.extraArgs -}}
{{- toYaml $args -}}
{{- end -}}

{{- /*
devstack-lib.containers: the sidecar container, as a list item to append to the
pod's containers. Takes the chart's root context, or (dict "root" $ "appEnv" ENV):
with sidecar.reload supervise the sidecar runs the app itself, so it gets the app's
environment too: ENV (the app container's env items, as YAML) and the provisioning
outputs (the same envFrom as devstack-lib.appEnvFrom).
*/ -}}
{{- define "devstack-lib.containers" -}}
{{- $root := .root | default . -}}
{{- $cfg := include "devstack-lib.config" $root | fromYaml -}}
{{- $supervise := eq $cfg.sidecar.reload "supervise" -}}
{{- if (and $cfg.enabled $cfg.sidecar.enabled) -}}
{{- $port := int $cfg.sidecar.port -}}
- name: devstack-sidecar
  image: {{ include "devstack-lib.image" $root | quote }}
  imagePullPolicy: {{ $cfg.image.pullPolicy }}
  args:
    {{- include "devstack-lib.sidecarArgs" $root | nindent 4 }}
  env:
    {{- /* the app's own first: on a duplicate name the later, devstack's, wins */}}
    {{- if and $supervise .appEnv }}
    {{- .appEnv | nindent 4 }}
    {{- end }}
    - name: DEVSTACK_LISTEN
      value: {{ printf "0.0.0.0:%d" $port | quote }}
    - name: DEVSTACK_WORKSPACE
      value: {{ $cfg.workspace.path | quote }}
    - name: DEVSTACK_TOKEN_FILE
      value: {{ printf "/etc/devstack/token/%s" $cfg.token.key | quote }}
    - name: DEVSTACK_MODE
      value: {{ $cfg.sidecar.mode | quote }}
    - name: DEVSTACK_RELOAD
      value: {{ $cfg.sidecar.reload | quote }}
    - name: DEVSTACK_LOG_FORMAT
      value: {{ $cfg.sidecar.logFormat | quote }}
    - name: DEVSTACK_SERVICE
      value: {{ include "devstack-lib.service" $root | quote }}
    - name: DEVSTACK_OWNER
      value: {{ $cfg.owner | toString | quote }}
    {{- with $cfg.sidecar.env }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
  {{- if $supervise }}
  {{- with include "devstack-lib.appEnvFrom" $root }}
  envFrom:
    {{- . | nindent 4 }}
  {{- end }}
  {{- end }}
  ports:
    - name: devstack-sync
      containerPort: {{ $port }}
      protocol: TCP
  readinessProbe:
    grpc:
      port: {{ $port }}
    periodSeconds: 5
  livenessProbe:
    grpc:
      port: {{ $port }}
    periodSeconds: 20
    failureThreshold: 3
  volumeMounts:
    - name: devstack-workspace
      mountPath: {{ $cfg.workspace.path | quote }}
    - name: devstack-token
      mountPath: /etc/devstack/token
      readOnly: true
    {{- if $cfg.sidecar.reloadConfig }}
    - name: devstack-reload
      mountPath: /etc/devstack/reload
      readOnly: true
    {{- end }}
    - name: devstack-tmp
      mountPath: /tmp
  {{- with $cfg.sidecar.resources }}
  resources:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with $cfg.sidecar.securityContext }}
  securityContext:
    {{- toYaml . | nindent 4 }}
  {{- end }}
{{- end -}}
{{- end -}}

{{- /* devstack-lib.appVolumeMounts: list items for the APP container's volumeMounts. */ -}}
{{- define "devstack-lib.appVolumeMounts" -}}
{{- $cfg := include "devstack-lib.config" . | fromYaml -}}
{{- if (and $cfg.enabled $cfg.sidecar.enabled) -}}
- name: devstack-workspace
  mountPath: {{ $cfg.workspace.path | quote }}
{{- end -}}
{{- end -}}

{{- /* devstack-lib.appEnv: list items for the APP container's env. */ -}}
{{- define "devstack-lib.appEnv" -}}
{{- $cfg := include "devstack-lib.config" . | fromYaml -}}
{{- if $cfg.enabled -}}
- name: DEVSTACK_SERVICE
  value: {{ include "devstack-lib.service" . | quote }}
- name: DEVSTACK_OWNER
  value: {{ $cfg.owner | toString | quote }}
{{- end -}}
{{- end -}}

{{- /*
devstack-lib.appEnvFrom: list items for the APP container's envFrom: the outputs the
provisioning hook wrote, as environment variables: queue URLs, ARNs and bucket names
from the ConfigMap, secret values from the Secret (optional: the app starts without it).
*/ -}}
{{- define "devstack-lib.appEnvFrom" -}}
{{- if include "devstack-lib.provisioning" . -}}
- configMapRef:
    name: {{ include "devstack-lib.outputsConfigMapName" . | quote }}
- secretRef:
    name: {{ include "devstack-lib.outputsSecretName" . | quote }}
    optional: true
{{- end -}}
{{- end -}}

{{- /* devstack-lib.volumes: list items for the pod's volumes. */ -}}
{{- define "devstack-lib.volumes" -}}
{{- $cfg := include "devstack-lib.config" . | fromYaml -}}
{{- $emptyDir := dict -}}
{{- with $cfg.workspace.medium -}}{{- $_ := set $emptyDir "medium" . -}}{{- end -}}
{{- with $cfg.workspace.sizeLimit -}}{{- $_ := set $emptyDir "sizeLimit" (toString .) -}}{{- end -}}
{{- if (and $cfg.enabled $cfg.sidecar.enabled) -}}
- name: devstack-workspace
  emptyDir: {{ toJson $emptyDir }}
{{- if and $cfg.workspace.seed.enabled (not $cfg.workspace.seed.command) }}
- name: devstack-tools
  emptyDir: {}
{{- end }}
- name: devstack-token
  secret:
    secretName: {{ include "devstack-lib.tokenSecretName" . | quote }}
    defaultMode: 0444
    items:
      - key: {{ $cfg.token.key | quote }}
        path: {{ $cfg.token.key | quote }}
{{- if $cfg.sidecar.reloadConfig }}
- name: devstack-reload
  configMap:
    name: {{ printf "%s-devstack-reload" (include "devstack-lib.base" .) | quote }}
{{- end }}
- name: devstack-tmp
  emptyDir: {}
{{- end -}}
{{- end -}}

{{- /*
devstack-lib.readinessProbe: the app container's readinessProbe from
devstack.readiness (an httpGet probe of path on port), or nothing when no path is
set. It renders whether or not devstack is enabled, so a chart can take its probe
from this one value in every environment:

  {{- with include "devstack-lib.readinessProbe" . }}
  readinessProbe:
    {{- . | nindent 12 }}
  {{- end }}

The sidecar probes the same URL after each supervised restart (--ready-url), so a
reload is reported done only once the app answers 200-399 there.
*/ -}}
{{- define "devstack-lib.readinessProbe" -}}
{{- $cfg := include "devstack-lib.config" . | fromYaml -}}
{{- $r := $cfg.readiness -}}
{{- if $r.path -}}
{{- if not ($r.port | int) -}}{{- fail "devstack.readiness.port is required with devstack.readiness.path" -}}{{- end -}}
httpGet:
  path: {{ $r.path | quote }}
  port: {{ $r.port | int }}
{{- with $r.initialDelaySeconds }}
initialDelaySeconds: {{ . }}
{{- end }}
periodSeconds: {{ $r.periodSeconds }}
timeoutSeconds: {{ $r.timeoutSeconds }}
failureThreshold: {{ $r.failureThreshold }}
{{- end -}}
{{- end -}}

{{- /*
The LocalStack provisioning hooks: a `pre-install,pre-upgrade` Job that runs
`devstack provision --prune` and a `pre-delete` Job that runs
`devstack provision --teardown`, with what they need (ServiceAccount, a Role that may
only write the outputs, and a Secret holding the spec and the AWS credentials).
Rendered whenever devstack and provisioning are enabled, even when devstack.aws
declares nothing: an upgrade that empties it prunes what the release had created,
and uninstalling still tears down. The support objects are hooks too (weight -20),
so they exist before the Jobs, and are deleted once the hooks succeed.
*/ -}}
{{- define "devstack-lib.provisionHooks" -}}
{{- if include "devstack-lib.provisioning" . -}}
{{- $cfg := include "devstack-lib.config" . | fromYaml -}}
{{- $p := $cfg.provision -}}
{{- $name := include "devstack-lib.provisionName" . -}}
{{- $outputs := include "devstack-lib.outputsConfigMapName" . -}}
{{- $secret := include "devstack-lib.outputsSecretName" . -}}
{{- $events := "pre-install,pre-upgrade" -}}
{{- if $p.teardown -}}{{- $events = "pre-install,pre-upgrade,pre-delete" -}}{{- end }}
---
apiVersion: v1
kind: ServiceAccount
metadata:
  name: {{ $name | quote }}
  namespace: {{ .Release.Namespace | quote }}
  labels:
    {{- include "devstack-lib.ownLabels" . | nindent 4 }}
    devstack.dev/role: provision
  annotations:
    helm.sh/hook: {{ $events | quote }}
    helm.sh/hook-weight: "-20"
    helm.sh/hook-delete-policy: before-hook-creation,hook-succeeded
---
apiVersion: rbac.authorization.k8s.io/v1
kind: Role
metadata:
  name: {{ $name | quote }}
  namespace: {{ .Release.Namespace | quote }}
  labels:
    {{- include "devstack-lib.ownLabels" . | nindent 4 }}
    devstack.dev/role: provision
  annotations:
    helm.sh/hook: {{ $events | quote }}
    helm.sh/hook-weight: "-20"
    helm.sh/hook-delete-policy: before-hook-creation,hook-succeeded
rules:
  # What `devstack provision` calls to write the outputs (devstack.agent.kube): it
  # reads the object, creates it or replaces it (PUT), and deletes it on teardown.
  # `create` cannot be limited by name in Kubernetes RBAC; everything else is
  # limited to the one ConfigMap and the one Secret.
  - apiGroups: [""]
    resources: [configmaps, secrets]
    verbs: [create]
  - apiGroups: [""]
    resources: [configmaps]
    resourceNames: [{{ $outputs | quote }}]
    verbs: [get, update, delete]
  - apiGroups: [""]
    resources: [secrets]
    resourceNames: [{{ $secret | quote }}]
    verbs: [get, update, delete]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata:
  name: {{ $name | quote }}
  namespace: {{ .Release.Namespace | quote }}
  labels:
    {{- include "devstack-lib.ownLabels" . | nindent 4 }}
    devstack.dev/role: provision
  annotations:
    helm.sh/hook: {{ $events | quote }}
    helm.sh/hook-weight: "-20"
    helm.sh/hook-delete-policy: before-hook-creation,hook-succeeded
roleRef:
  apiGroup: rbac.authorization.k8s.io
  kind: Role
  name: {{ $name | quote }}
subjects:
  - kind: ServiceAccount
    name: {{ $name | quote }}
    namespace: {{ .Release.Namespace | quote }}
---
apiVersion: v1
kind: Secret
metadata:
  name: {{ $name | quote }}
  namespace: {{ .Release.Namespace | quote }}
  labels:
    {{- include "devstack-lib.ownLabels" . | nindent 4 }}
    devstack.dev/role: provision
  annotations:
    helm.sh/hook: {{ $events | quote }}
    helm.sh/hook-weight: "-20"
    helm.sh/hook-delete-policy: before-hook-creation,hook-succeeded
type: Opaque
data:
  # The spec may hold secret values (Secrets Manager, SSM SecureString): a Secret, never a ConfigMap.
  spec.yaml: {{ toYaml $cfg.aws | b64enc | quote }}
  {{- if not $p.credentials.existingSecret }}
  AWS_ACCESS_KEY_ID: {{ $p.credentials.accessKeyId | toString | b64enc | quote }}
  AWS_SECRET_ACCESS_KEY: {{ $p.credentials.secretAccessKey | toString | b64enc | quote }}
  {{- end }}
{{- include "devstack-lib.provisionJob" (dict "root" . "name" $name "outputs" $outputs "secret" $secret "teardown" false) }}
{{- if $p.teardown }}
{{- include "devstack-lib.provisionJob" (dict "root" . "name" $name "outputs" $outputs "secret" $secret "teardown" true) }}
{{- end }}
{{- end -}}
{{- end -}}

{{- /*
One hook Job: (dict "root" $ "name" SUPPORT-OBJECTS "outputs" CONFIGMAP "secret" SECRET
"teardown" BOOL).
*/ -}}
{{- define "devstack-lib.provisionJob" -}}
{{- $root := .root -}}
{{- $cfg := include "devstack-lib.config" $root | fromYaml -}}
{{- $p := $cfg.provision -}}
{{- $credentials := $p.credentials.existingSecret | default .name -}}
{{- $args := list "provision" "--spec" "/etc/devstack/provision/spec.yaml" "--release" $root.Release.Name "--namespace" $root.Release.Namespace "--outputs-configmap" .outputs "--outputs-secret" .secret -}}
{{- if .teardown -}}
{{- $args = append $args "--teardown" -}}
{{- else if $p.prune -}}
{{- $args = append $args "--prune" -}}
{{- end }}
---
apiVersion: batch/v1
kind: Job
metadata:
  name: {{ ternary (include "devstack-lib.teardownName" $root) .name .teardown | quote }}
  namespace: {{ $root.Release.Namespace | quote }}
  labels:
    {{- include "devstack-lib.ownLabels" $root | nindent 4 }}
    devstack.dev/role: provision
  annotations:
    helm.sh/hook: {{ ternary "pre-delete" "pre-install,pre-upgrade" .teardown | quote }}
    helm.sh/hook-weight: "0"
    helm.sh/hook-delete-policy: before-hook-creation,hook-succeeded
spec:
  backoffLimit: {{ int $p.backoffLimit }}
  activeDeadlineSeconds: {{ int $p.activeDeadlineSeconds }}
  template:
    metadata:
      labels:
        {{- /* the chart's own labels win over podLabels of the same key */}}
        {{- $labels := include "devstack-lib.ownLabels" $root | fromYaml }}
        {{- $_ := set $labels "devstack.dev/role" "provision" }}
        {{- toYaml (merge $labels ($p.podLabels | default dict)) | nindent 8 }}
      {{- with $p.podAnnotations }}
      annotations:
        {{- toYaml . | nindent 8 }}
      {{- end }}
    spec:
      restartPolicy: Never
      serviceAccountName: {{ .name | quote }}
      {{- with $cfg.imagePullSecrets }}
      imagePullSecrets:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      containers:
        - name: provision
          image: {{ include "devstack-lib.image" $root | quote }}
          imagePullPolicy: {{ $cfg.image.pullPolicy }}
          args:
            {{- toYaml $args | nindent 12 }}
          env:
            - name: DEVSTACK_OWNER
              value: {{ $cfg.owner | toString | quote }}
            - name: AWS_ENDPOINT_URL
              value: {{ $p.endpoint | quote }}
            - name: AWS_REGION
              value: {{ $p.region | quote }}
            - name: AWS_DEFAULT_REGION
              value: {{ $p.region | quote }}
            - name: AWS_ACCESS_KEY_ID
              valueFrom:
                secretKeyRef:
                  name: {{ $credentials | quote }}
                  key: AWS_ACCESS_KEY_ID
            - name: AWS_SECRET_ACCESS_KEY
              valueFrom:
                secretKeyRef:
                  name: {{ $credentials | quote }}
                  key: AWS_SECRET_ACCESS_KEY
            - name: HOME
              value: /tmp
            {{- with $p.extraEnv }}
            {{- toYaml . | nindent 12 }}
            {{- end }}
          {{- with $p.extraEnvFrom }}
          envFrom:
            {{- toYaml . | nindent 12 }}
          {{- end }}
          volumeMounts:
            - name: spec
              mountPath: /etc/devstack/provision
              readOnly: true
            - name: tmp
              mountPath: /tmp
            {{- with $p.extraVolumeMounts }}
            {{- toYaml . | nindent 12 }}
            {{- end }}
          {{- with $p.resources }}
          resources:
            {{- toYaml . | nindent 12 }}
          {{- end }}
          {{- with $p.securityContext }}
          securityContext:
            {{- toYaml . | nindent 12 }}
          {{- end }}
      volumes:
        - name: spec
          secret:
            secretName: {{ .name | quote }}
            items:
              - key: spec.yaml
                path: spec.yaml
        - name: tmp
          emptyDir: {}
        {{- with $p.extraVolumes }}
        {{- toYaml . | nindent 8 }}
        {{- end }}
{{- end -}}

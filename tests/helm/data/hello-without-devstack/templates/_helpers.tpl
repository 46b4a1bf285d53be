{{- define "hello.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "hello.selectorLabels" -}}
app.kubernetes.io/name: {{ .Chart.Name | quote }}
app.kubernetes.io/instance: {{ .Release.Name | quote }}
{{- end -}}

{{- define "hello.labels" -}}
{{ include "hello.selectorLabels" . }}
app.kubernetes.io/managed-by: {{ .Release.Service | quote }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{- /* The app's env items: PORT, then .Values.env (a map or a list of env items). */}}
{{- define "hello.appEnv" -}}
- name: PORT
  value: {{ .Values.port | quote }}
{{- if kindIs "map" .Values.env }}
{{- range $name, $value := .Values.env }}
- name: {{ $name | quote }}
  value: {{ $value | toString | quote }}
{{- end }}
{{- else if .Values.env }}
{{ toYaml .Values.env }}
{{- end }}
{{- end -}}

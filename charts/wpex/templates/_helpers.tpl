{{- define "wpex.name" -}}
{{- printf "%s-operator" .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "wpex.labels" -}}
app.kubernetes.io/name: wpex-operator
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{- define "wpex.selectorLabels" -}}
app.kubernetes.io/name: wpex-operator
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "wpex.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}

{{- define "wpex.relayImage" -}}
{{- printf "%s:%s" .Values.relayImage.repository (default .Chart.AppVersion .Values.relayImage.tag) -}}
{{- end -}}

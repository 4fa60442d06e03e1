{{/* The chart's name: .Values.nameOverride or "wpex". */}}
{{- define "wpex.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/*
The release's base name: .Values.fullnameOverride; else the release name when it already
contains the chart's name (release "wpex" gives "wpex"); else "<release>-<name>".
*/}}
{{- define "wpex.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/*
The operator's objects (Deployment, ServiceAccount, RBAC, the Lease): "<fullname>-operator",
so "wpex-operator" for release "wpex". The fullname is cut to 46 characters so that the
longest name derived from this one, the Service "<this>-metrics", stays a 63-character DNS label.
*/}}
{{- define "wpex.operatorName" -}}
{{- printf "%s-operator" (include "wpex.fullname" . | trunc 46 | trimSuffix "-") -}}
{{- end -}}

{{/* The operator's metrics Service, which the helm test probes. */}}
{{- define "wpex.metricsServiceName" -}}
{{- printf "%s-metrics" (include "wpex.operatorName" .) -}}
{{- end -}}

{{- define "wpex.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "wpex.operatorName" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "wpex.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Labels on everything the release creates, but for app.kubernetes.io/name. */}}
{{- define "wpex.commonLabels" -}}
helm.sh/chart: {{ include "wpex.chart" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end -}}

{{- define "wpex.labels" -}}
{{ include "wpex.commonLabels" . }}
app.kubernetes.io/name: {{ include "wpex.appName" . }}
{{- end -}}

{{/* app.kubernetes.io/name of the operator pods: "wpex-operator" unless nameOverride is set. */}}
{{- define "wpex.appName" -}}
{{- printf "%s-operator" (include "wpex.name" . | trunc 54 | trimSuffix "-") -}}
{{- end -}}

{{- define "wpex.selectorLabels" -}}
app.kubernetes.io/name: {{ include "wpex.appName" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{/*
The namespaces the operator watches, as a JSON list: rbac.watchNamespaces (or the release's
namespace when it is empty) in namespaced mode; [] (every namespace) in cluster mode, which
ignores rbac.watchNamespaces.
*/}}
{{- define "wpex.watchNamespaces" -}}
{{- if eq .Values.rbac.scope "cluster" -}}
{{- list | toJson -}}
{{- else if .Values.rbac.watchNamespaces -}}
{{- .Values.rbac.watchNamespaces | uniq | toJson -}}
{{- else -}}
{{- list .Release.Namespace | toJson -}}
{{- end -}}
{{- end -}}

{{/*
What the operator may do with its resources and the objects it owns, in each watched namespace
(a Role each) or in all of them (the ClusterRole).
*/}}
{{- define "wpex.rules" -}}
# Read relays and peer keys, and write their status.
- apiGroups: [wpex.io]
  resources: [wireguardrelays, wireguardpeerkeys]
  verbs: [get, list, watch]
- apiGroups: [wpex.io]
  resources: [wireguardrelays/status, wireguardpeerkeys/status]
  verbs: [get, patch]
# Each relay's key ConfigMap, Deployment and Service, applied server-side (create and patch).
# Nothing is deleted by the operator: the garbage collector removes them with their relay.
- apiGroups: [""]
  resources: [configmaps, services]
  verbs: [get, list, watch, create, patch]
- apiGroups: [apps]
  resources: [deployments]
  verbs: [get, list, watch, create, patch]
# A pod is a relay pod only if its ReplicaSet is the relay Deployment's: labels can be copied.
- apiGroups: [apps]
  resources: [replicasets]
  verbs: [list]
# Relay pods: watched for their IPs (the operator scrapes their metrics), and annotated with the
# key ConfigMap's version, which makes kubelet refresh the mounted keys at once instead of at its
# next periodic sync (a minute by default).
- apiGroups: [""]
  resources: [pods]
  verbs: [get, list, watch, patch]
- apiGroups: [events.k8s.io]
  resources: [events]
  verbs: [create, patch]
{{- end -}}

{{- define "wpex.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}

{{- define "wpex.relayImage" -}}
{{- printf "%s:%s" .Values.relayImage.repository (default .Chart.AppVersion .Values.relayImage.tag) -}}
{{- end -}}

{{/* The hardened securityContext of the operator container, also used by the helm test. */}}
{{- define "wpex.containerSecurityContext" -}}
runAsNonRoot: true
runAsUser: 65532
runAsGroup: 65532
readOnlyRootFilesystem: true
allowPrivilegeEscalation: false
capabilities:
  drop: [ALL]
{{- end -}}

{{/* Chart name, or nameOverride. */}}
{{- define "regcred.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Full name: fullnameOverride, else the release name when it already contains
the chart name (`helm install regcred ...` gives `regcred`), else RELEASE-CHART.
*/}}
{{- define "regcred.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "regcred.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Labels on every object. */}}
{{- define "regcred.labels" -}}
helm.sh/chart: {{ include "regcred.chart" . }}
{{ include "regcred.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: regcred
{{- end }}

{{/* Labels selecting the operator Pods. */}}
{{- define "regcred.selectorLabels" -}}
app.kubernetes.io/name: {{ include "regcred.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "regcred.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "regcred.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "regcred.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}
{{- end }}

{{/* "true" when leader election is on: forced, or more than one replica. */}}
{{- define "regcred.leaderElect" -}}
{{- if or .Values.leaderElection.enabled (gt (int .Values.replicas) 1) }}true{{ end }}
{{- end }}

{{- define "regcred.leaseName" -}}
{{- default (include "regcred.fullname" .) .Values.leaderElection.leaseName }}
{{- end }}

{{- define "regcred.clusterResourceNamespace" -}}
{{- default .Release.Namespace .Values.clusterResourceNamespace }}
{{- end }}

{{/*
"true" when the chart installs the operator (the hub, or a single
cluster); empty in spoke-only mode (spoke.enabled), which installs only
what a hub elsewhere needs in this cluster.
*/}}
{{- define "regcred.hub" -}}
{{- if not .Values.spoke.enabled }}true{{ end }}
{{- end }}

{{/* "true" when the fleet's shard Leases are used: --fleet with --leader-elect. */}}
{{- define "regcred.fleetLeases" -}}
{{- if and (include "regcred.hub" .) .Values.fleet.enabled (include "regcred.leaderElect" .) }}true{{ end }}
{{- end }}

{{/* The spoke's long-lived token Secret for the hub's ServiceAccount. */}}
{{- define "regcred.spokeTokenSecretName" -}}
{{- default (printf "%s-token" (include "regcred.serviceAccountName" .)) .Values.spoke.tokenSecret.name | trunc 253 }}
{{- end }}

{{/*
Spoke mode: the admissionregistration.k8s.io version of the spoke's
injection policy ("v1", "v1beta1"), or empty when it is not installed.
*/}}
{{- define "regcred.spokeInjectionVersion" -}}
{{- if and .Values.spoke.enabled .Values.spoke.injection.install }}
{{- if .Values.spoke.injection.apiVersion }}
{{- .Values.spoke.injection.apiVersion }}
{{- else if .Capabilities.APIVersions.Has "admissionregistration.k8s.io/v1/MutatingAdmissionPolicy" }}v1
{{- else if .Capabilities.APIVersions.Has "admissionregistration.k8s.io/v1beta1/MutatingAdmissionPolicy" }}v1beta1
{{- end }}
{{- end }}
{{- end }}

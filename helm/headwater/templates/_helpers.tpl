{{/* Names, labels and the settings wiring shared by every template. */}}

{{- define "headwater.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "headwater.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else if contains (include "headwater.name" .) .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name (include "headwater.name" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{/* Name of one component's objects: <fullname>-<component>. */}}
{{- define "headwater.component" -}}
{{- printf "%s-%s" (include "headwater.fullname" .root) .component | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "headwater.selectorLabels" -}}
app.kubernetes.io/name: {{ include "headwater.name" .root }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{- define "headwater.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .root.Chart.Name .root.Chart.Version | replace "+" "_" }}
{{ include "headwater.selectorLabels" . }}
app.kubernetes.io/version: {{ .root.Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .root.Release.Service }}
app.kubernetes.io/part-of: headwater
{{- with .root.Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{- define "headwater.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}

{{- define "headwater.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "headwater.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{/* Where secret settings are mounted, and where data_dir is. */}}
{{- define "headwater.secretsDir" -}}/etc/headwater/secrets{{- end -}}
{{- define "headwater.flagsDir" -}}/etc/headwater/flags{{- end -}}
{{- define "headwater.tlsDir" -}}/etc/headwater/tls{{- end -}}
{{- define "headwater.dataDir" -}}{{ default "/var/lib/headwater" .Values.config.data_dir }}{{- end -}}
{{- define "headwater.recoveryDir" -}}{{ include "headwater.dataDir" . }}/recovery{{- end -}}

{{- define "headwater.secretName" -}}
{{- default (printf "%s-secrets" (include "headwater.fullname" .)) .Values.secrets.existingSecret -}}
{{- end -}}

{{/* The secret settings that exist: the keys of the existing Secret, or the non-empty values of the created one. */}}
{{- define "headwater.secretKeys" -}}
{{- $keys := list -}}
{{- if .Values.secrets.existingSecret -}}
{{- $keys = .Values.secrets.existingSecretKeys -}}
{{- else -}}
{{- range $key, $value := .Values.secrets.values -}}
{{- if $value -}}{{- $keys = append $keys $key -}}{{- end -}}
{{- end -}}
{{- end -}}
{{- toJson (sortAlpha $keys) -}}
{{- end -}}

{{/* Which secret settings each kind of pod may read. The canary and the quality checks sign events and read every
sink, so they get all of them. */}}
{{- define "headwater.secretsFor" -}}
{{- $wanted := dict
  "gateway" (list "hmac_keys" "write_keys" "admin_token" "audit_hash_key" "kafka_sasl_password" "redis_url" "postgres_url")
  "flow" (list "pii_salts" "kafka_sasl_password" "s3_secret_access_key" "clickhouse_password" "snowflake_password" "snowflake_private_key" "postgres_url")
-}}
{{- $present := include "headwater.secretKeys" .root | fromJsonArray -}}
{{- $out := list -}}
{{- range $present -}}
{{- if or (not (hasKey $wanted $.component)) (has . (get $wanted $.component)) -}}{{- $out = append $out . -}}{{- end -}}
{{- end -}}
{{- toJson $out -}}
{{- end -}}

{{/* env entries HEADWATER_<NAME>_FILE for the secret settings a component reads. */}}
{{- define "headwater.secretEnv" -}}
{{- range (include "headwater.secretsFor" . | fromJsonArray) }}
- name: HEADWATER_{{ upper . }}_FILE
  value: {{ printf "%s/%s" (include "headwater.secretsDir" $.root) . | quote }}
{{- end }}
{{- end -}}

{{/* The volume holding those secret settings as files (nothing when there are none). */}}
{{- define "headwater.secretVolume" -}}
{{- $keys := include "headwater.secretsFor" . | fromJsonArray -}}
{{- if $keys }}
- name: secrets
  secret:
    secretName: {{ include "headwater.secretName" .root }}
    defaultMode: 0440
    items:
      {{- range $keys }}
      - key: {{ . }}
        path: {{ . }}
      {{- end }}
{{- end }}
{{- end -}}

{{- define "headwater.secretMount" -}}
{{- if (include "headwater.secretsFor" . | fromJsonArray) }}
- name: secrets
  mountPath: {{ include "headwater.secretsDir" .root }}
  readOnly: true
{{- end }}
{{- end -}}

{{/* Environment every Headwater container gets: the settings ConfigMap and the pod's own identity. */}}
{{- define "headwater.envFrom" -}}
- configMapRef:
    name: {{ include "headwater.component" (dict "root" . "component" "config") }}
{{- end -}}

{{/* Pod-level scheduling and security shared by the workloads. */}}
{{- define "headwater.podCommon" -}}
serviceAccountName: {{ include "headwater.serviceAccountName" . }}
{{- with .Values.imagePullSecrets }}
imagePullSecrets:
  {{- toYaml . | nindent 2 }}
{{- end }}
securityContext:
  {{- toYaml .Values.podSecurityContext | nindent 2 }}
{{- end -}}

{{/* A preferred spread of one component's pods across nodes, used when no affinity is given. */}}
{{- define "headwater.spread" -}}
podAntiAffinity:
  preferredDuringSchedulingIgnoredDuringExecution:
    - weight: 100
      podAffinityTerm:
        topologyKey: kubernetes.io/hostname
        labelSelector:
          matchLabels:
            {{- include "headwater.selectorLabels" . | nindent 12 }}
{{- end -}}

{{/* The Bytewax cluster's variables, the same in the flow's init containers and its main container. */}}
{{- define "headwater.bytewaxEnv" -}}
{{- $recovery := .Values.flow.recovery -}}
{{- $name := include "headwater.component" (dict "root" . "component" "flow") -}}
- name: BYTEWAX_POD_NAME
  valueFrom:
    fieldRef:
      fieldPath: metadata.name
- name: POD_NAMESPACE
  valueFrom:
    fieldRef:
      fieldPath: metadata.namespace
- name: BYTEWAX_REPLICAS
  value: {{ .Values.flow.replicas | quote }}
- name: BYTEWAX_STATEFULSET_NAME
  value: {{ $name | quote }}
- name: BYTEWAX_SERVICE_NAME
  value: {{ $name | quote }}
- name: CLUSTER_DOMAIN
  value: {{ .Values.flow.clusterDomain | quote }}
- name: BYTEWAX_PROCESS_PORT
  value: {{ .Values.flow.port | quote }}
- name: BYTEWAX_HOSTFILE_PATH
  value: /etc/bytewax/hostfile.txt
- name: BYTEWAX_WORKERS_PER_PROCESS
  value: {{ .Values.flow.workersPerProcess | quote }}
- name: BYTEWAX_RECOVERY_DIRECTORY
  value: {{ include "headwater.recoveryDir" . | quote }}
- name: BYTEWAX_RECOVERY_PARTITIONS
  value: {{ $recovery.partitions | quote }}
- name: BYTEWAX_SNAPSHOT_INTERVAL
  value: {{ $recovery.snapshotInterval | quote }}
- name: BYTEWAX_RECOVERY_BACKUP_INTERVAL
  value: {{ $recovery.backupInterval | quote }}
- name: BYTEWAX_DATAFLOW_API_ENABLED
  value: "true"
- name: BYTEWAX_DATAFLOW_API_PORT
  value: {{ .Values.flow.apiPort | quote }}
- name: PYTHONUNBUFFERED
  value: "1"
{{- end -}}

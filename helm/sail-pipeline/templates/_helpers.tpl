{{/* Names, labels, images and the rendered pipeline file shared by every template. */}}

{{- define "sail.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* <release>-<chart>, or <release> when it already holds the chart name; 50 chars leave room
for the suffixes of the controller Job (a hash) and its pods. */}}
{{- define "sail.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 50 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 50 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 50 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "sail.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "sail.selectorLabels" -}}
app.kubernetes.io/name: {{ include "sail.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "sail.labels" -}}
helm.sh/chart: {{ include "sail.chart" . }}
{{ include "sail.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: sail-pipeline
{{- end -}}

{{- define "sail.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "sail.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{/* The Secret holding SAIL_STORE_ACCESS_KEY / SAIL_STORE_SECRET_KEY. */}}
{{- define "sail.secretName" -}}
{{- if .Values.store.existingSecret -}}
{{- .Values.store.existingSecret -}}
{{- else -}}
{{- printf "%s-store" (include "sail.fullname" .) -}}
{{- end -}}
{{- end -}}

{{- define "sail.tag" -}}
{{- default .Chart.AppVersion .Values.image.tag -}}
{{- end -}}

{{/* <registry>/<repository>:<tag>; pass (dict "root" $ "repository" "...") */}}
{{- define "sail.image" -}}
{{- $root := .root -}}
{{- if $root.Values.image.registry -}}
{{- printf "%s/%s:%s" $root.Values.image.registry .repository (include "sail.tag" $root) -}}
{{- else -}}
{{- printf "%s:%s" .repository (include "sail.tag" $root) -}}
{{- end -}}
{{- end -}}

{{/* Which workload image each stage kind runs: image.kinds names a key of image.workloads. */}}
{{- define "sail.kindImage" -}}
{{- $image := index .root.Values.image.kinds .kind | default "" -}}
{{- if not $image -}}
{{- fail (printf "stage kind %q has no image: add it to image.kinds (known kinds: %s)" .kind (keys .root.Values.image.kinds | sortAlpha | join ", ")) -}}
{{- end -}}
{{- include "sail.image" (dict "root" .root "repository" (index .root.Values.image.workloads $image)) -}}
{{- end -}}

{{- define "sail.minioName" -}}
{{- printf "%s-minio" (include "sail.fullname" .) -}}
{{- end -}}

{{/* SAIL_STORE_ENDPOINT: the value, else the bundled MinIO's Service, else empty (AWS S3). */}}
{{- define "sail.storeEndpoint" -}}
{{- if .Values.store.endpoint -}}
{{- .Values.store.endpoint -}}
{{- else if .Values.minio.enabled -}}
{{- printf "http://%s.%s.svc:9000" (include "sail.minioName" .) .Release.Namespace -}}
{{- end -}}
{{- end -}}

{{/* The bucket of pipeline.store (s3://<bucket>/<prefix>). */}}
{{- define "sail.bucket" -}}
{{- regexReplaceAll "^s3://([^/]+).*$" .Values.pipeline.store "${1}" -}}
{{- end -}}

{{/* Fails the render on value combinations the schema cannot express. */}}
{{- define "sail.checkValues" -}}
{{- $s := .Values.store -}}
{{- if and $s.existingSecret (or $s.accessKey $s.secretKey) -}}
{{- fail (printf "store.accessKey/secretKey are set but store.existingSecret is %q: set store.existingSecret to \"\" to have the chart create the Secret, or drop the keys" $s.existingSecret) -}}
{{- end -}}
{{- if and (not $s.existingSecret) (not .Values.minio.enabled) (not (and $s.accessKey $s.secretKey)) -}}
{{- fail "store credentials missing: set store.existingSecret to a Secret with SAIL_STORE_ACCESS_KEY and SAIL_STORE_SECRET_KEY, or set both store.accessKey and store.secretKey" -}}
{{- end -}}
{{- if and (not .Values.serviceAccount.create) .Values.rbac.create (not .Values.serviceAccount.name) -}}
{{- fail "rbac.create binds the Role to serviceAccount.name: set it when serviceAccount.create is false" -}}
{{- end -}}
{{- end -}}

{{/* A Kubernetes toleration (camelCase) as a pipeline-file toleration (snake_case). */}}
{{- define "sail.specToleration" -}}
{{- $t := dict -}}
{{- range $k, $v := . -}}
{{- if eq $k "tolerationSeconds" -}}{{- $_ := set $t "toleration_seconds" $v -}}
{{- else -}}{{- $_ := set $t $k $v -}}{{- end -}}
{{- end -}}
{{- toJson $t -}}
{{- end -}}

{{/* The pipeline file: values.pipeline plus what the chart knows (backend, images, Secret,
node pools, Kueue queue); a stage's own settings always win. */}}
{{- define "sail.pipeline" -}}
{{- $root := . -}}
{{- $p := deepCopy .Values.pipeline -}}
{{- $_ := set $p "backend" "kubernetes" -}}
{{- if not (hasKey $p "image") -}}
{{- $_ := set $p "image" (include "sail.image" (dict "root" $root "repository" .Values.image.workloads.train)) -}}
{{- end -}}
{{- $_ := set $p "store_secret" (include "sail.secretName" .) -}}
{{- $k := dict "job_api" .Values.kubeflow.jobApi -}}
{{- if eq .Values.kubeflow.jobApi "trainjob" -}}
{{- $_ := set $k "runtime" (dict "name" .Values.kubeflow.trainer.runtime.name "kind" .Values.kubeflow.trainer.runtime.kind) -}}
{{- end -}}
{{- $_ := set $p "kubernetes" $k -}}
{{- $stages := list -}}
{{- range $stage := .Values.pipeline.stages -}}
{{- $s := deepCopy $stage -}}
{{- $res := deepCopy (default (dict) $s.resources) -}}
{{- if not (hasKey $res "image") -}}
{{- $_ := set $res "image" (include "sail.kindImage" (dict "root" $root "kind" $s.kind)) -}}
{{- end -}}
{{- $pool := index $root.Values.nodePools $s.kind | default (dict) -}}
{{- if and $pool.nodeSelector (not (hasKey $res "node_selector")) -}}
{{- $_ := set $res "node_selector" $pool.nodeSelector -}}
{{- end -}}
{{- if and $pool.tolerations (not (hasKey $res "tolerations")) -}}
{{- $tols := list -}}
{{- range $pool.tolerations -}}
{{- $tols = append $tols (include "sail.specToleration" . | fromJson) -}}
{{- end -}}
{{- $_ := set $res "tolerations" $tols -}}
{{- end -}}
{{- if and $pool.priorityClassName (not (hasKey $res "priority_class")) -}}
{{- $_ := set $res "priority_class" $pool.priorityClassName -}}
{{- end -}}
{{- $_ := set $s "resources" $res -}}
{{- if $root.Values.kueue.queueName -}}
{{- $sched := deepCopy (default (dict) $s.scheduling) -}}
{{- if not (hasKey $sched "kueue_queue") -}}
{{- $_ := set $sched "kueue_queue" $root.Values.kueue.queueName -}}
{{- end -}}
{{- $_ := set $s "scheduling" $sched -}}
{{- end -}}
{{- $stages = append $stages $s -}}
{{- end -}}
{{- $_ := set $p "stages" $stages -}}
{{- toYaml $p -}}
{{- end -}}

{{/* Pod and container security settings shared by the chart's own pods. */}}
{{- define "sail.podSecurityContext" -}}
runAsNonRoot: true
runAsUser: 10001
runAsGroup: 10001
fsGroup: 10001
seccompProfile:
  type: RuntimeDefault
{{- end -}}

{{- define "sail.containerSecurityContext" -}}
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
runAsNonRoot: true
capabilities:
  drop: ["ALL"]
{{- end -}}

{{/* Store credentials from the Secret, never as literals. */}}
{{- define "sail.storeCredentialEnv" -}}
- name: SAIL_STORE_ACCESS_KEY
  valueFrom:
    secretKeyRef:
      name: {{ include "sail.secretName" . }}
      key: SAIL_STORE_ACCESS_KEY
- name: SAIL_STORE_SECRET_KEY
  valueFrom:
    secretKeyRef:
      name: {{ include "sail.secretName" . }}
      key: SAIL_STORE_SECRET_KEY
{{- end -}}

{{/* Chart name, truncated to the 63 characters a label allows. */}}
{{- define "image-tag-watcher.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Fully qualified app name; 63 characters (some names are DNS labels). */}}
{{- define "image-tag-watcher.fullname" -}}
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

{{- define "image-tag-watcher.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "image-tag-watcher.labels" -}}
helm.sh/chart: {{ include "image-tag-watcher.chart" . }}
{{ include "image-tag-watcher.selectorLabels" . }}
{{- if .Chart.AppVersion }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
{{- end }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{- define "image-tag-watcher.selectorLabels" -}}
app.kubernetes.io/name: {{ include "image-tag-watcher.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/* The watcher pods (the bundled Redis has component "redis"). */}}
{{- define "image-tag-watcher.watcherSelectorLabels" -}}
{{ include "image-tag-watcher.selectorLabels" . }}
app.kubernetes.io/component: watcher
{{- end }}

{{- define "image-tag-watcher.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "image-tag-watcher.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "image-tag-watcher.gitSecretName" -}}
{{- default (printf "%s-git" (include "image-tag-watcher.fullname" .)) .Values.gitCredentials.existingSecret }}
{{- end }}

{{- define "image-tag-watcher.redisName" -}}
{{- printf "%s-redis" (include "image-tag-watcher.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Where the git clone lives (an emptyDir); written into shards.yaml as git.workdir. */}}
{{- define "image-tag-watcher.workdir" -}}/var/cache/watcher{{- end }}

{{- define "image-tag-watcher.port" -}}
{{- $server := .Values.shards.server | default dict }}
{{- $server.port | default 8080 | int }}
{{- end }}

{{/* True (non-empty) when the watcher has a Redis: bundled, by URL, or by Secret. */}}
{{- define "image-tag-watcher.hasRedis" -}}
{{- $redis := .Values.shards.redis | default dict }}
{{- if or .Values.redis.enabled $redis.url .Values.externalRedis.existingSecret }}true{{ end }}
{{- end }}

{{/*
shards.interval in whole seconds (rounded up), from the watcher's duration
grammar: 90s, 2m, 10m, 1h, 500ms (decimals allowed).
*/}}
{{- define "image-tag-watcher.intervalSeconds" -}}
{{- $text := toString (.Values.shards.interval | default "2m") }}
{{- if not (regexMatch "^[0-9]+(\\.[0-9]+)?(ms|s|m|h)$" $text) }}
{{- fail (printf "shards.interval: not a duration: %q (use e.g. 90s, 2m, 10m, 1h)" $text) }}
{{- end }}
{{- $number := regexFind "^[0-9]+(\\.[0-9]+)?" $text | float64 }}
{{- $unit := regexReplaceAll "^[0-9]+(\\.[0-9]+)?" $text "" }}
{{- $factor := get (dict "ms" 0.001 "s" 1.0 "m" 60.0 "h" 3600.0) $unit }}
{{- $seconds := mulf $number $factor | ceil | int }}
{{- max $seconds 1 }}
{{- end }}

{{/* The rendered shards.yaml: the `shards` values tree plus the keys this chart owns. */}}
{{- define "image-tag-watcher.config" -}}
{{- $cfg := deepCopy .Values.shards }}
{{- $git := get $cfg "git" | default dict }}
{{- $_ := set $git "workdir" (include "image-tag-watcher.workdir" .) }}
{{- $_ := set $cfg "git" $git }}
{{- if .Values.redis.enabled }}
{{- $_ := set $cfg "redis" (dict "url" (printf "redis://%s:%d/0" (include "image-tag-watcher.redisName" .) (int .Values.redis.port))) }}
{{- end }}
{{- toYaml $cfg }}
{{- end }}

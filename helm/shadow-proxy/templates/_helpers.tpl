{{/*
Names. The base name is "shadow-proxy" (not .Chart.Name) so that a parent chart
that embeds the proxy with the "shadow-proxy.container" template computes the
same ConfigMap and Secret names as this chart renders.
*/}}
{{- define "shadow-proxy.name" -}}
{{- default "shadow-proxy" .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "shadow-proxy.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := include "shadow-proxy.name" . }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "shadow-proxy.selectorLabels" -}}
app.kubernetes.io/name: {{ include "shadow-proxy.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "shadow-proxy.labels" -}}
{{ include "shadow-proxy.selectorLabels" . }}
app.kubernetes.io/version: {{ .Values.image.tag | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service | default "Helm" }}
app.kubernetes.io/part-of: shadow-proxy
{{- end }}

{{- define "shadow-proxy.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- .Values.serviceAccount.name | default (include "shadow-proxy.fullname" .) }}
{{- else }}
{{- .Values.serviceAccount.name | default "default" }}
{{- end }}
{{- end }}

{{- define "shadow-proxy.image" -}}
{{- printf "%s:%s" .Values.image.repository .Values.image.tag }}
{{- end }}

{{/* The Secret holding the admin token, and its key. */}}
{{- define "shadow-proxy.tokenSecret" -}}
{{- .Values.adminToken.existingSecret | default (printf "%s-admin" (include "shadow-proxy.fullname" .)) }}
{{- end }}

{{- define "shadow-proxy.tokenKey" -}}
{{- if .Values.adminToken.existingSecret }}{{ .Values.adminToken.existingSecretKey }}{{ else }}token{{ end }}
{{- end }}

{{/*
The proxy's config file: the user's `config` with the parts the chart owns laid
over it (listeners, backend URLs, token file, state file).
*/}}
{{- define "shadow-proxy.config" -}}
{{- $legacy := .Values.legacy.url }}
{{- if ne .Values.mode "standalone" }}
{{- $legacy = printf "http://127.0.0.1:%v" .Values.legacy.port }}
{{- end }}
{{- /* The admin listener binds to 127.0.0.1 unless told otherwise; the chart
       opens it on purpose, because Prometheus and the kubelet's probes reach
       it from outside the container. Reads (metrics, health, rollout status)
       are open; every write needs the bearer token from the Secret. */}}
{{- $owned := dict
  "listen" (dict "host" "0.0.0.0" "port" .Values.proxy.port)
  "admin" (dict "host" "0.0.0.0" "port" .Values.proxy.adminPort "token_file" "/var/run/secrets/shadow-proxy/token")
  "backends" (dict "legacy" (dict "url" $legacy) "agent" (dict "url" .Values.agent.url))
  "state_file" "/var/lib/shadow-proxy/state.json" }}
{{- if not .Values.adminToken.enabled }}
{{- $_ := unset $owned.admin "token_file" }}
{{- end }}
{{- $_ := mustMergeOverwrite $owned (include "shadow-proxy.fleetConfig" . | fromYaml) }}
{{- $_ := mustMergeOverwrite $owned (include "shadow-proxy.agentConfig" . | fromYaml) }}
{{- $cfg := mustMergeOverwrite (deepCopy (.Values.config | default dict)) $owned }}
{{- /* routeOverrides: per-route changes by name, so `--set` can change one
       route's split (Helm replaces lists whole, so routes[0] cannot be set alone). */}}
{{- $overrides := deepCopy (.Values.routeOverrides | default dict) }}
{{- $routes := list }}
{{- range ($cfg.routes | default list) }}
{{- $route := deepCopy . }}
{{- if hasKey $overrides $route.name }}
{{- $route = mustMergeOverwrite $route (get $overrides $route.name) }}
{{- $_ := unset $overrides $route.name }}
{{- end }}
{{- $routes = append $routes $route }}
{{- end }}
{{- if $overrides }}
{{- fail (printf "routeOverrides names routes that config.routes does not have: %s" (keys $overrides | sortAlpha | join ", ")) }}
{{- end }}
{{- if $cfg.routes }}
{{- $_ := set $cfg "routes" $routes }}
{{- end }}
{{- toYaml $cfg }}
{{- end }}

{{/*
The fleet part of the config (coordination, redis, analysis, prometheus), from
.Values.fleet. The chart owns these keys: it wires the Redis password's Secret
and the Pod's name to them, so a copy under `config` would be a second, silent
source of truth, and is refused. The password and the replica name come from
the environment (see shadow-proxy.env), never the ConfigMap.
*/}}
{{- define "shadow-proxy.fleetConfig" -}}
{{- $fleet := .Values.fleet }}
{{- range list "coordination" "redis" "analysis" "prometheus" }}
{{- if hasKey ($.Values.config | default dict) . }}
{{- fail (printf "config.%s is set by the chart from fleet.%s: set fleet.%s instead (see values.yaml)" . . .) }}
{{- end }}
{{- end }}
{{- $out := dict "coordination" $fleet.coordination "analysis" $fleet.analysis }}
{{- if eq $fleet.coordination "redis" }}
{{- $r := $fleet.redis }}
{{- $_ := set $out "redis" (dict
  "url" (required "fleet.redis.url is required with fleet.coordination=redis, e.g. redis://redis-master:6379/0" $r.url)
  "key_prefix" ($r.keyPrefix | default (include "shadow-proxy.fullname" .))
  "lease_ttl" $r.leaseTtl
  "poll_interval" $r.pollInterval
  "timeout" $r.timeout) }}
{{- end }}
{{- if eq $fleet.analysis "prometheus" }}
{{- $p := $fleet.prometheus }}
{{- $prom := dict
  "url" (required "fleet.prometheus.url is required with fleet.analysis=prometheus, e.g. http://prometheus-operated.monitoring:9090" $p.url)
  "timeout" $p.timeout
  "max_consecutive_errors" $p.maxConsecutiveErrors
  "min_window" $p.minWindow }}
{{- with $p.selector }}
{{- $_ := set $prom "selector" . }}
{{- end }}
{{- with $p.queries }}
{{- $_ := set $prom "queries" . }}
{{- end }}
{{- $_ := set $out "prometheus" $prom }}
{{- end }}
{{- toYaml $out }}
{{- end }}

{{/*
Bytes in a size written either way the chart meets: a Kubernetes quantity
(16Mi, 1Gi, 500M) or the proxy's units (10MiB, 1GB, 512KiB), or a plain number.
*/}}
{{- define "shadow-proxy.sizeText" -}}
{{- if kindIs "string" . }}{{ trim . }}{{ else }}{{ printf "%.0f" (float64 .) }}{{ end }}
{{- end }}

{{- define "shadow-proxy.bytes" -}}
{{- $text := include "shadow-proxy.sizeText" . }}
{{- $pattern := "^([0-9]+(?:\\.[0-9]+)?)\\s*([A-Za-z]*)$" }}
{{- if not (regexMatch $pattern $text) }}
{{- fail (printf "%q is not a size" $text) }}
{{- end }}
{{- $number := regexReplaceAll $pattern $text "${1}" | float64 }}
{{- $unit := regexReplaceAll $pattern $text "${2}" }}
{{- $k := 1000.0 }}
{{- $ki := 1024.0 }}
{{- $scale := dict "" 1.0 "B" 1.0
  "k" $k "KB" $k "M" (mulf $k $k) "MB" (mulf $k $k) "G" (mulf $k $k $k) "GB" (mulf $k $k $k)
  "Ki" $ki "KiB" $ki "Mi" (mulf $ki $ki) "MiB" (mulf $ki $ki) "Gi" (mulf $ki $ki $ki) "GiB" (mulf $ki $ki $ki)
  "Ti" (mulf $ki $ki $ki $ki) "T" (mulf $k $k $k $k) }}
{{- if not (hasKey $scale $unit) }}
{{- fail (printf "%q: unknown size unit %q" $text $unit) }}
{{- end }}
{{- printf "%.0f" (mulf $number (get $scale $unit)) }}
{{- end }}

{{/*
The recording and tracing parts of the config, from .Values.recording and
.Values.tracing. The chart owns these keys: recording needs the volume the
chart mounts (the root filesystem is read-only), and the tracing headers come
from a Secret through the environment (see shadow-proxy.env), never the
ConfigMap; so a copy under `config` is refused, as for the fleet's keys.
*/}}
{{- define "shadow-proxy.agentConfig" -}}
{{- range list "recording" "tracing" }}
{{- if hasKey ($.Values.config | default dict) . }}
{{- fail (printf "config.%s is set by the chart from %s: set %s.* instead (see values.yaml)" . . .) }}
{{- end }}
{{- end }}
{{- $out := dict }}
{{- $r := .Values.recording }}
{{- if $r.enabled }}
{{- $file := include "shadow-proxy.bytes" $r.maxFileSize | float64 }}
{{- $total := include "shadow-proxy.bytes" $r.maxTotalSize | float64 }}
{{- $fileText := include "shadow-proxy.sizeText" $r.maxFileSize }}
{{- $totalText := include "shadow-proxy.sizeText" $r.maxTotalSize }}
{{- if lt $total $file }}
{{- fail (printf "recording.maxTotalSize (%s) must be at least recording.maxFileSize (%s): the directory holds at least one whole file" $totalText $fileText) }}
{{- end }}
{{- if not $r.existingClaim }}
{{- $limit := include "shadow-proxy.bytes" $r.sizeLimit | float64 }}
{{- if gt $total (mulf $limit 0.9) }}
{{- fail (printf "recording.maxTotalSize (%s) must be at most 90%% of recording.sizeLimit (%s): the kubelet evicts a pod whose emptyDir passes its sizeLimit, and it counts disk blocks, not file bytes. Lower recording.maxTotalSize, raise recording.sizeLimit, or use recording.existingClaim." $totalText $r.sizeLimit) }}
{{- end }}
{{- end }}
{{- $_ := set $out "recording" (dict
  "enabled" true
  "directory" "/var/lib/shadow-proxy/recordings"
  "match_percent" $r.matchPercent
  "record_errors" $r.recordErrors
  "max_file_size" $r.maxFileSize
  "max_total_size" $r.maxTotalSize
  "max_body_size" $r.maxBodySize
  "queue_size" $r.queueSize) }}
{{- end }}
{{- $t := .Values.tracing }}
{{- if and $t.headers (not $t.existingSecret) }}
{{- fail (printf "tracing.headers (%s) name keys of a Secret: set tracing.existingSecret to the Secret's name" (keys $t.headers | sortAlpha | join ", ")) }}
{{- end }}
{{- if $t.otlpEndpoint }}
{{- $_ := set $out "tracing" (dict
  "otlp_endpoint" $t.otlpEndpoint
  "service_name" $t.serviceName
  "sample_ratio" $t.sampleRatio
  "timeout" $t.timeout
  "interval" $t.interval
  "max_queue" $t.maxQueue) }}
{{- end }}
{{- toYaml $out }}
{{- end }}

{{/*
The proxy container's environment: with Redis coordination, the replica's name
in the lease is the Pod's name (downward API), and the Redis password comes from
the Secret; with span export, each tracing header from its Secret (the proxy
reads SHADOW_PROXY_TRACING__HEADERS__<NAME> into tracing.headers); then the
user's proxy.env. A name the user sets wins (a name twice in one env list is
rejected by server-side apply).
*/}}
{{- define "shadow-proxy.env" -}}
{{- $user := .Values.proxy.env | default list }}
{{- $names := list }}
{{- range $user }}
{{- $names = append $names .name }}
{{- end }}
{{- $env := list }}
{{- if eq .Values.fleet.coordination "redis" }}
{{- if not (has "SHADOW_PROXY_REDIS__REPLICA" $names) }}
{{- $env = append $env (dict "name" "SHADOW_PROXY_REDIS__REPLICA" "valueFrom" (dict "fieldRef" (dict "fieldPath" "metadata.name"))) }}
{{- end }}
{{- $r := .Values.fleet.redis }}
{{- if and $r.existingSecret (not (has "SHADOW_PROXY_REDIS__PASSWORD" $names)) }}
{{- $env = append $env (dict "name" "SHADOW_PROXY_REDIS__PASSWORD" "valueFrom" (dict "secretKeyRef" (dict "name" $r.existingSecret "key" $r.existingSecretKey))) }}
{{- end }}
{{- end }}
{{- $t := .Values.tracing }}
{{- if and $t.otlpEndpoint $t.existingSecret }}
{{- range $header := keys ($t.headers | default dict) | sortAlpha }}
{{- $name := printf "SHADOW_PROXY_TRACING__HEADERS__%s" (upper $header) }}
{{- if not (has $name $names) }}
{{- $env = append $env (dict "name" $name "valueFrom" (dict "secretKeyRef" (dict "name" $t.existingSecret "key" (get $t.headers $header)))) }}
{{- end }}
{{- end }}
{{- end }}
{{- toYaml (dict "env" (concat $env $user)) }}
{{- end }}

{{/*
THE RULE: one rollout per pod is refused where the chart runs many pods. With
replicaCount > 1 or autoscaling, local coordination and a route whose rollout
runs in auto mode, each pod would judge its own traffic and move its own share:
one pod at 50% while another rolls back. Manual mode (the config sets the share,
and every pod reloads it) and fleet.coordination=redis are fine;
fleet.allowLocalAutoRollout=true accepts per-pod rollouts on purpose.
*/}}
{{- define "shadow-proxy.fleetCheck" -}}
{{- include "shadow-proxy.workersCheck" . }}
{{- $many := or .Values.autoscaling.enabled (gt (int .Values.replicaCount) 1) }}
{{- if and $many (eq .Values.fleet.coordination "local") (not .Values.fleet.allowLocalAutoRollout) }}
{{- $cfg := include "shadow-proxy.config" . | fromYaml }}
{{- $auto := list }}
{{- range ($cfg.routes | default list) }}
{{- /* `rollout: {}` is a rollout with every default, auto mode included; `rollout: null` is none */}}
{{- if kindIs "map" .rollout }}
{{- if ne (get .rollout "mode" | default "auto") "manual" }}
{{- $auto = append $auto .name }}
{{- end }}
{{- end }}
{{- end }}
{{- if $auto }}
{{- $why := printf "replicaCount is %v" .Values.replicaCount }}
{{- if .Values.autoscaling.enabled }}
{{- $why = "autoscaling is enabled" }}
{{- end }}
{{- $which := printf "route %s rolls" (first $auto) }}
{{- if gt (len $auto) 1 }}
{{- $which = printf "routes %s roll" (join ", " $auto) }}
{{- end }}
{{- fail (printf "%s and %s out in auto mode with fleet.coordination=local: each pod would run its own rollout on its own traffic, and the pods would drift apart (one at 50%% while another rolls back). Set fleet.coordination=redis and fleet.redis.url for one rollout across the pods; or use rollout.mode=manual, or replicaCount=1; or set fleet.allowLocalAutoRollout=true to accept one rollout per pod." $why $which) }}
{{- end }}
{{- end }}
{{- end }}

{{/*
The same rule inside one pod: with proxy.workers > 1 and local coordination,
each worker would run its own rollout on its share of the traffic, and the
proxy refuses to start. No override: fail here, not in a crash loop.
*/}}
{{- define "shadow-proxy.workersCheck" -}}
{{- $workers := int (.Values.proxy.workers | default 1) }}
{{- if and (gt $workers 1) (eq .Values.fleet.coordination "local") }}
{{- $cfg := include "shadow-proxy.config" . | fromYaml }}
{{- $auto := list }}
{{- range ($cfg.routes | default list) }}
{{- if and (kindIs "map" .rollout) (ne (get .rollout "mode" | default "auto") "manual") }}
{{- $auto = append $auto .name }}
{{- end }}
{{- end }}
{{- if $auto }}
{{- fail (printf "proxy.workers is %d and route %s rolls out in auto mode with fleet.coordination=local: each worker would run its own rollout on its own share of the traffic, and the proxy refuses to start. Set fleet.coordination=redis and fleet.redis.url, or use rollout.mode=manual, or proxy.workers=1." $workers (join ", " $auto)) }}
{{- end }}
{{- end }}
{{- end }}

{{/*
What a running pod cannot pick up by hot reload (see proxy/app.py RESTART_ONLY):
its checksum is a pod annotation, so changing any of it rolls the pods, while a
new split or route only updates the ConfigMap and is reloaded in place.
*/}}
{{- define "shadow-proxy.restartChecksum" -}}
{{- $cfg := include "shadow-proxy.config" . | fromYaml }}
{{- $keys := list "listen" "admin" "backends" "shutdown" "logging" "redaction" "state_file" "metrics" "reload_interval" "coordination" "redis" "analysis" "prometheus" "recording" "tracing" }}
{{- $restart := dict "token" (.Values.adminToken.value | default "") }}
{{- /* The tracing headers' Secret and keys are in the pod's env: a change there rolls the pods anyway. */}}
{{- range $keys }}
{{- $_ := set $restart . (get $cfg .) }}
{{- end }}
{{- toYaml $restart | sha256sum }}
{{- end }}

{{/*
The shadow-proxy container. Usable from a parent chart that lists this chart as
a dependency, to put the proxy into the parent's own pod:

  containers:
    {{- include "shadow-proxy.container" (dict "Values" (index .Values "shadow-proxy") "Release" .Release) | nindent 4 }}
  volumes:
    {{- include "shadow-proxy.volumes" (dict "Values" (index .Values "shadow-proxy") "Release" .Release) | nindent 4 }}
*/}}
{{- define "shadow-proxy.container" -}}
- name: shadow-proxy
  image: {{ include "shadow-proxy.image" . }}
  imagePullPolicy: {{ .Values.image.pullPolicy }}
  {{- $workers := int (.Values.proxy.workers | default 1) }}
  args: ["run", "--config", "/etc/shadow-proxy/proxy.yaml"{{ if gt $workers 1 }}, "--workers", "{{ $workers }}"{{ end }}]
  ports:
    - name: http
      containerPort: {{ .Values.proxy.port }}
      protocol: TCP
    - name: admin
      containerPort: {{ .Values.proxy.adminPort }}
      protocol: TCP
  {{- $env := include "shadow-proxy.env" . | fromYaml }}
  {{- with $env.env }}
  env:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  startupProbe:
    httpGet:
      path: /healthz
      port: admin
    periodSeconds: 1
    failureThreshold: 30
  livenessProbe:
    httpGet:
      path: /healthz
      port: admin
    periodSeconds: 10
    failureThreshold: 3
  readinessProbe:
    httpGet:
      path: /readyz
      port: admin
    periodSeconds: 2
    timeoutSeconds: 2
    failureThreshold: 2
  {{- if .Values.drain.preStopSeconds }}
  lifecycle:
    preStop:
      sleep:
        seconds: {{ .Values.drain.preStopSeconds }}
  {{- end }}
  resources:
    {{- toYaml .Values.proxy.resources | nindent 4 }}
  securityContext:
    {{- toYaml .Values.proxy.securityContext | nindent 4 }}
  volumeMounts:
    - name: shadow-proxy-config
      mountPath: /etc/shadow-proxy
      readOnly: true
    - name: shadow-proxy-state
      mountPath: /var/lib/shadow-proxy
    - name: shadow-proxy-tmp
      mountPath: /tmp
    {{- if .Values.recording.enabled }}
    - name: shadow-proxy-recordings
      mountPath: /var/lib/shadow-proxy/recordings
    {{- end }}
    {{- if .Values.adminToken.enabled }}
    - name: shadow-proxy-token
      mountPath: /var/run/secrets/shadow-proxy
      readOnly: true
    {{- end }}
{{- end }}

{{- define "shadow-proxy.volumes" -}}
- name: shadow-proxy-config
  configMap:
    name: {{ include "shadow-proxy.fullname" . }}
- name: shadow-proxy-state
  {{- if .Values.state.existingClaim }}
  persistentVolumeClaim:
    claimName: {{ .Values.state.existingClaim }}
  {{- else }}
  emptyDir:
    sizeLimit: {{ .Values.state.sizeLimit }}
  {{- end }}
- name: shadow-proxy-tmp
  emptyDir:
    sizeLimit: 64Mi
{{- if .Values.recording.enabled }}
- name: shadow-proxy-recordings
  {{- if .Values.recording.existingClaim }}
  persistentVolumeClaim:
    claimName: {{ .Values.recording.existingClaim }}
  {{- else }}
  emptyDir:
    sizeLimit: {{ .Values.recording.sizeLimit }}
  {{- end }}
{{- end }}
{{- if .Values.adminToken.enabled }}
- name: shadow-proxy-token
  secret:
    secretName: {{ include "shadow-proxy.tokenSecret" . }}
    items:
      - key: {{ include "shadow-proxy.tokenKey" . }}
        path: token
{{- end }}
{{- end }}

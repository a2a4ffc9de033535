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
What a running pod cannot pick up by hot reload (see proxy/app.py RESTART_ONLY):
its checksum is a pod annotation, so changing any of it rolls the pods, while a
new split or route only updates the ConfigMap and is reloaded in place.
*/}}
{{- define "shadow-proxy.restartChecksum" -}}
{{- $cfg := include "shadow-proxy.config" . | fromYaml }}
{{- $keys := list "listen" "admin" "backends" "shutdown" "logging" "redaction" "state_file" "metrics" "reload_interval" }}
{{- $restart := dict "token" (.Values.adminToken.value | default "") }}
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
  args: ["run", "--config", "/etc/shadow-proxy/proxy.yaml"]
  ports:
    - name: http
      containerPort: {{ .Values.proxy.port }}
      protocol: TCP
    - name: admin
      containerPort: {{ .Values.proxy.adminPort }}
      protocol: TCP
  {{- with .Values.proxy.env }}
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
{{- if .Values.adminToken.enabled }}
- name: shadow-proxy-token
  secret:
    secretName: {{ include "shadow-proxy.tokenSecret" . }}
    items:
      - key: {{ include "shadow-proxy.tokenKey" . }}
        path: token
{{- end }}
{{- end }}

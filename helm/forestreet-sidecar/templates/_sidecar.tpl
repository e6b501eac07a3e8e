{{/*
Reusable named templates: add forestreet-sidecar to any pod.

Every template takes one argument, a dict:
  root    the top-level context ($) of the calling chart (for .Release and .Chart)
  values  this chart's values tree: .Values here; in a parent chart that depends on this one
          with `alias: forestreet`, .Values.forestreet (set `forestreet.embedded: true` there so
          this chart renders no Deployment of its own)

  forestreet-sidecar.container       the native sidecar, one item of the pod's initContainers
  forestreet-sidecar.volumes         the pod volumes it needs (token emptyDir, API key, config)
  forestreet-sidecar.tokenMount      the application's read-only volumeMount of the token directory
  forestreet-sidecar.configMap       the ConfigMap with config.yaml (a whole manifest)
  forestreet-sidecar.secret          the Secret from apiKey.value (empty with apiKey.existingSecret)
  forestreet-sidecar.podAnnotations  checksum annotation: roll the pods when the config changes

The pod must run with fsGroup equal to values.podSecurityContext.fsGroup (10001 by default): the
token file is written with that group and mode 0640, and the API key file is readable by it.

Paths are fixed, so every user of these templates agrees on them:
  /var/run/forestreet/token                    token file (memory-backed emptyDir, whole directory)
  /var/run/secrets/forestreet/api-key          API key (Secret volume, whole directory, never subPath)
  /etc/forestreet-sidecar/config.yaml          configuration (ConfigMap volume)
  /etc/forestreet-sidecar-ca/ca-bundle.pem     private CA bundle, only with values.caBundle (its
                                               ConfigMap or Secret; api.ca_bundle points here)

values.sidecar.extraVolumeMounts are added to the sidecar container as given; the volumes they
name are the pod's own (values.extraVolumes in this chart, your pod's volumes in a parent chart).
*/}}

{{/* Base name of the ConfigMap and Secret: <release>-forestreet-sidecar unless overridden. */}}
{{- define "forestreet-sidecar.resourceName" -}}
{{- $v := .values }}
{{- if $v.fullnameOverride }}
{{- $v.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default "forestreet-sidecar" $v.nameOverride }}
{{- if contains $name .root.Release.Name }}
{{- .root.Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .root.Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{/* Labels of the resources owned by the sidecar (ConfigMap, Secret). */}}
{{- define "forestreet-sidecar.componentLabels" -}}
helm.sh/chart: {{ printf "%s-%s" .root.Chart.Name .root.Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
app.kubernetes.io/name: {{ default "forestreet-sidecar" .values.nameOverride | trunc 63 | trimSuffix "-" }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: token-sidecar
app.kubernetes.io/part-of: forestreet-sidecar
app.kubernetes.io/managed-by: {{ .root.Release.Service }}
{{- with .values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/*
An image reference, from a dict:
  image   an image value: repository, registry (optional), tag, digest (optional)
  global  the values' global (optional): global.imageRegistry wins over image.registry
  what    the value's path, for the error message ("sidecar.image")
The registry goes in front of the repository, unless the repository already names a host: its
first path component contains "." or ":" or is "localhost" (Docker's rule), e.g.
registry.example.com/forestreet-sidecar, which is then used as it is. The digest wins over the tag.
*/}}
{{- define "forestreet-sidecar.imageReference" -}}
{{- $img := .image }}
{{- $repo := toString $img.repository }}
{{- $registry := default (toString (default "" $img.registry)) (toString (default "" (default dict .global).imageRegistry)) }}
{{- $first := splitList "/" $repo | first }}
{{- $hasHost := and (contains "/" $repo) (or (contains "." $first) (contains ":" $first) (eq $first "localhost")) }}
{{- if and $registry (not $hasHost) }}
{{- $repo = printf "%s/%s" (trimSuffix "/" $registry) $repo }}
{{- end }}
{{- if $img.digest }}
{{- printf "%s@%s" $repo $img.digest }}
{{- else }}
{{- printf "%s:%s" $repo (required (printf "forestreet-sidecar: %s.tag is required" .what) $img.tag | toString) }}
{{- end }}
{{- end }}

{{/* The values' global, in this chart or as a parent chart's dependency. */}}
{{- define "forestreet-sidecar.global" -}}
{{- toYaml (default (default dict .root.Values.global) .values.global) }}
{{- end }}

{{/* Sidecar image reference: [registry/]repository, then @digest or :tag. */}}
{{- define "forestreet-sidecar.image" -}}
{{- include "forestreet-sidecar.imageReference" (dict "image" .values.sidecar.image "global" (include "forestreet-sidecar.global" . | fromYaml) "what" "sidecar.image") }}
{{- end }}

{{/*
The CA bundle volume's source: (dict "configMap" NAME) or (dict "secret" NAME), or an empty dict
without values.caBundle; fails when both are set.
*/}}
{{- define "forestreet-sidecar.caBundleSource" -}}
{{- $ca := default dict .values.caBundle }}
{{- if and $ca.configMap $ca.secret }}
{{- fail "forestreet-sidecar: set caBundle.configMap or caBundle.secret, not both" }}
{{- else if $ca.configMap }}
{{- toYaml (dict "configMap" (toString $ca.configMap)) }}
{{- else if $ca.secret }}
{{- toYaml (dict "secret" (toString $ca.secret)) }}
{{- else }}
{{- toYaml dict }}
{{- end }}
{{- end }}

{{/* Where the sidecar finds the CA bundle of values.caBundle (api.ca_bundle). */}}
{{- define "forestreet-sidecar.caBundlePath" -}}
/etc/forestreet-sidecar-ca/ca-bundle.pem
{{- end }}

{{/*
One probe of the sidecar, from a dict: probe (the values' probe), path and port (the default
httpGet). Without a handler of its own (httpGet, exec, tcpSocket, grpc) the probe asks path on
port; an httpGet of its own is merged over that default, any other handler replaces it. Every
other field (timings, thresholds) is rendered as given.
*/}}
{{- define "forestreet-sidecar.probe" -}}
{{- $p := default dict .probe }}
{{- $handlers := list }}
{{- range $h := list "exec" "grpc" "httpGet" "tcpSocket" }}
{{- if hasKey $p $h }}
{{- $handlers = append $handlers $h }}
{{- end }}
{{- end }}
{{- if gt (len $handlers) 1 }}
{{- fail (printf "forestreet-sidecar: a sidecar probe has more than one handler (%s); keep one" (join ", " $handlers)) }}
{{- end }}
{{- $httpGet := dict "path" .path "port" .port }}
{{- if not $handlers }}
{{- toYaml (dict "httpGet" $httpGet) }}
{{- else if eq (first $handlers) "httpGet" }}
{{- toYaml (dict "httpGet" (mustMergeOverwrite $httpGet (deepCopy (default dict $p.httpGet)))) }}
{{- else }}
{{- toYaml (pick $p (first $handlers)) }}
{{- end }}
{{- with omit $p "exec" "grpc" "httpGet" "tcpSocket" }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/* Name of the Secret holding the API key; fails without a key source. */}}
{{- define "forestreet-sidecar.secretName" -}}
{{- $k := .values.apiKey }}
{{- if $k.existingSecret }}
{{- $k.existingSecret }}
{{- else if $k.value }}
{{- include "forestreet-sidecar.resourceName" . }}
{{- else }}
{{- fail "forestreet-sidecar: no API key: set apiKey.existingSecret (the name of a Secret you created, recommended) or apiKey.value (e.g. --set-file apiKey.value=./api-key)" }}
{{- end }}
{{- end }}

{{/*
The sidecar's config.yaml: the chart's defaults with values.sidecar.config merged over them.
The defaults are what the volumes below provide, so they only change together.
*/}}
{{- define "forestreet-sidecar.config" -}}
{{- $v := .values }}
{{- $token := dict "path" "/var/run/forestreet/token" "mode" "0640" }}
{{- with $v.podSecurityContext }}
{{- with .fsGroup }}
{{- $_ := set $token "group" (toString .) }}
{{- end }}
{{- end }}
{{- $api := dict "key_file" "/var/run/secrets/forestreet/api-key" }}
{{- $caSource := include "forestreet-sidecar.caBundleSource" . | fromYaml }}
{{- $caPath := include "forestreet-sidecar.caBundlePath" . }}
{{- if $caSource }}
{{- $_ := set $api "ca_bundle" $caPath }}
{{- end }}
{{- $defaults := dict
      "api" $api
      "token" $token
      "server" (dict "listen" (printf "0.0.0.0:%v" $v.sidecar.port)) }}
{{- $config := mustMergeOverwrite $defaults (deepCopy (default dict $v.sidecar.config)) }}
{{- if and $caSource (ne (toString $config.api.ca_bundle) $caPath) }}
{{- fail (printf "forestreet-sidecar: sidecar.config.api.ca_bundle %q and caBundle both set: caBundle mounts the bundle at %s and sets api.ca_bundle itself; drop one" (toString $config.api.ca_bundle) $caPath) }}
{{- end }}
{{- $path := toString $config.token.path }}
{{- if not (hasPrefix "/var/run/forestreet/" $path) }}
{{- fail (printf "forestreet-sidecar: sidecar.config.token.path %q must be in /var/run/forestreet/ (the shared emptyDir)" $path) }}
{{- end }}
{{- with $config.token.session_path }}
{{- if not (hasPrefix "/var/run/forestreet/" (toString .)) }}
{{- fail (printf "forestreet-sidecar: sidecar.config.token.session_path %q must be in /var/run/forestreet/ (the shared emptyDir)" (toString .)) }}
{{- end }}
{{- end }}
{{- if not (kindIs "string" $config.token.mode) }}
{{- fail "forestreet-sidecar: sidecar.config.token.mode must be a quoted octal string like \"0640\"" }}
{{- end }}
{{- $listen := toString $config.server.listen }}
{{- if not (hasSuffix (printf ":%v" $v.sidecar.port) $listen) }}
{{- fail (printf "forestreet-sidecar: sidecar.config.server.listen %q must use sidecar.port %v (the probes and the metrics port use it); set sidecar.port instead" $listen $v.sidecar.port) }}
{{- end }}
{{- toYaml $config }}
{{- end }}

{{/* Pod annotations of a pod that runs the sidecar. */}}
{{- define "forestreet-sidecar.podAnnotations" -}}
checksum/forestreet-sidecar-config: {{ include "forestreet-sidecar.config" . | sha256sum }}
{{- end }}

{{/* The native sidecar: an item of the pod's initContainers. */}}
{{- define "forestreet-sidecar.container" -}}
{{- $v := .values }}
{{- $s := $v.sidecar -}}
- name: forestreet-sidecar
  image: {{ include "forestreet-sidecar.image" . | quote }}
  imagePullPolicy: {{ $s.image.pullPolicy }}
  # A native sidecar: started before the application, kept running beside it, stopped after it.
  restartPolicy: Always
  args:
    - --config=/etc/forestreet-sidecar/config.yaml
    - run
  {{- with $s.env }}
  {{- range . }}
  {{- if eq (toString .name) "FORESTREET_API_KEY" }}
  {{- fail "forestreet-sidecar: do not pass the API key in sidecar.env; it is mounted from the Secret as a file" }}
  {{- end }}
  {{- end }}
  env:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  ports:
    - name: fs-metrics
      containerPort: {{ $s.port }}
      protocol: TCP
  # The application container starts only once this succeeds, i.e. once a valid token is on disk.
  startupProbe:
    {{- include "forestreet-sidecar.probe" (dict "probe" $s.startupProbe "path" "/readyz" "port" $s.port) | nindent 4 }}
  livenessProbe:
    {{- include "forestreet-sidecar.probe" (dict "probe" $s.livenessProbe "path" "/healthz" "port" $s.port) | nindent 4 }}
  readinessProbe:
    {{- include "forestreet-sidecar.probe" (dict "probe" $s.readinessProbe "path" "/readyz" "port" $s.port) | nindent 4 }}
  {{- with $s.resources }}
  resources:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  securityContext:
    {{- toYaml $s.securityContext | nindent 4 }}
  volumeMounts:
    - name: forestreet-token
      mountPath: /var/run/forestreet
    - name: forestreet-api-key
      mountPath: /var/run/secrets/forestreet
      readOnly: true
    - name: forestreet-config
      mountPath: /etc/forestreet-sidecar
      readOnly: true
    {{- if include "forestreet-sidecar.caBundleSource" . | fromYaml }}
    - name: forestreet-ca-bundle
      mountPath: {{ include "forestreet-sidecar.caBundlePath" . | dir }}
      readOnly: true
    {{- end }}
    {{- with $s.extraVolumeMounts }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
{{- end }}

{{/* The pod volumes the sidecar needs. */}}
{{- define "forestreet-sidecar.volumes" -}}
- name: forestreet-token
  emptyDir:
    medium: Memory
    sizeLimit: {{ .values.tokenVolume.sizeLimit | quote }}
- name: forestreet-api-key
  secret:
    secretName: {{ include "forestreet-sidecar.secretName" . }}
    defaultMode: {{ .values.apiKey.defaultMode }}
    items:
      - key: {{ .values.apiKey.secretKey | quote }}
        path: api-key
- name: forestreet-config
  configMap:
    name: {{ include "forestreet-sidecar.resourceName" . }}
{{- with include "forestreet-sidecar.caBundleSource" . | fromYaml }}
{{- $items := list (dict "key" (toString $.values.caBundle.key) "path" (include "forestreet-sidecar.caBundlePath" $ | base)) }}
# The private CA of values.caBundle, as the file api.ca_bundle names (a directory mount, no subPath).
- name: forestreet-ca-bundle
  {{- if .configMap }}
  configMap:
    name: {{ .configMap }}
    items:
      {{- toYaml $items | nindent 6 }}
  {{- else }}
  secret:
    secretName: {{ .secret }}
    items:
      {{- toYaml $items | nindent 6 }}
  {{- end }}
{{- end }}
{{- end }}

{{/*
The application's mount of the token directory: read-only, the whole directory (a subPath mount
would never see the renamed file of a refresh).
*/}}
{{- define "forestreet-sidecar.tokenMount" -}}
- name: forestreet-token
  mountPath: /var/run/forestreet
  readOnly: true
{{- end }}

{{/* The ConfigMap holding config.yaml. */}}
{{- define "forestreet-sidecar.configMap" -}}
apiVersion: v1
kind: ConfigMap
metadata:
  name: {{ include "forestreet-sidecar.resourceName" . }}
  namespace: {{ .root.Release.Namespace }}
  labels:
    {{- include "forestreet-sidecar.componentLabels" . | nindent 4 }}
data:
  config.yaml: |
    {{- include "forestreet-sidecar.config" . | nindent 4 }}
{{- end }}

{{/* The Secret holding apiKey.value; nothing when apiKey.existingSecret is set. */}}
{{- define "forestreet-sidecar.secret" -}}
{{- $k := .values.apiKey }}
{{- if and (not $k.existingSecret) $k.value }}
apiVersion: v1
kind: Secret
type: Opaque
metadata:
  name: {{ include "forestreet-sidecar.resourceName" . }}
  namespace: {{ .root.Release.Namespace }}
  labels:
    {{- include "forestreet-sidecar.componentLabels" . | nindent 4 }}
data:
  {{ $k.secretKey | quote }}: {{ $k.value | toString | b64enc | quote }}
{{- end }}
{{- end }}

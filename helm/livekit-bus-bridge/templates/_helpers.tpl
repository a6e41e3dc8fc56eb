{{/* Names are cut to 63 characters: some Kubernetes name fields are limited to that by the DNS spec. */}}
{{- define "livekit-bus-bridge.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "livekit-bus-bridge.fullname" -}}
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

{{- define "livekit-bus-bridge.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Standard labels (Helm best practices). */}}
{{- define "livekit-bus-bridge.labels" -}}
helm.sh/chart: {{ include "livekit-bus-bridge.chart" . }}
{{ include "livekit-bus-bridge.selectorLabels" . }}
app.kubernetes.io/version: {{ .Values.image.tag | default .Chart.AppVersion | quote }}
app.kubernetes.io/component: bridge
app.kubernetes.io/part-of: livekit-bus-bridge
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{/* Selectors are immutable after install, so they carry only name and instance. */}}
{{- define "livekit-bus-bridge.selectorLabels" -}}
app.kubernetes.io/name: {{ include "livekit-bus-bridge.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "livekit-bus-bridge.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "livekit-bus-bridge.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "livekit-bus-bridge.image" -}}
{{- printf "%s:%s" .Values.image.repository (.Values.image.tag | default .Chart.AppVersion) }}
{{- end }}

{{- define "livekit-bus-bridge.secretName" -}}
{{- .Values.existingSecret.name | default (include "livekit-bus-bridge.fullname" .) }}
{{- end }}

{{- define "livekit-bus-bridge.configPath" -}}
/etc/livekit-bridge/config.yaml
{{- end }}

{{/*
Which secrets the bridge reads, as a list of [env var, key in existingSecret.keys, chart value]. Only the
ones the rendered config uses: the bridge rejects, for example, a NATS password without a NATS user, and
an empty secret.
*/}}
{{- define "livekit-bus-bridge.secretRefs" -}}
{{- $refs := list (list "BRIDGE_LIVEKIT__API_SECRET" "livekitApiSecret" .Values.livekit.apiSecret "livekit.apiSecret") }}
{{- if and .Values.kafka.enabled (hasPrefix "SASL_" .Values.kafka.securityProtocol) }}
{{- $refs = append $refs (list "BRIDGE_KAFKA__SASL_PASSWORD" "kafkaSaslPassword" .Values.kafka.sasl.password "kafka.sasl.password") }}
{{- end }}
{{- if and .Values.nats.enabled (eq .Values.nats.auth.mode "password") }}
{{- $refs = append $refs (list "BRIDGE_NATS__PASSWORD" "natsPassword" .Values.nats.auth.password "nats.auth.password") }}
{{- end }}
{{- if and .Values.nats.enabled (eq .Values.nats.auth.mode "token") }}
{{- $refs = append $refs (list "BRIDGE_NATS__TOKEN" "natsToken" .Values.nats.auth.token "nats.auth.token") }}
{{- end }}
{{- toJson $refs }}
{{- end }}

{{/* The bridge's env vars (secrets, then the downward-API replica id), shared by the Deployment and the
helm test Pod. */}}
{{- define "livekit-bus-bridge.env" -}}
{{- include "livekit-bus-bridge.secretEnv" . }}
{{- if eq .Values.ownership.mode "nats" }}
{{- /* Each pod's name in the lease bucket: stable for the pod's life and readable in /rooms and logs. */}}
- name: BRIDGE_OWNERSHIP__REPLICA_ID
  valueFrom:
    fieldRef:
      fieldPath: metadata.name
{{- end }}
{{- end }}

{{/* The secret env vars. */}}
{{- define "livekit-bus-bridge.secretEnv" -}}
{{- $secretName := include "livekit-bus-bridge.secretName" . }}
{{- range include "livekit-bus-bridge.secretRefs" . | fromJsonArray }}
- name: {{ index . 0 }}
  valueFrom:
    secretKeyRef:
      name: {{ $secretName }}
      key: {{ index $.Values.existingSecret.keys (index . 1) }}
{{- end }}
{{- end }}

{{/*
The bridge's config file, from the values (the bridge's keys are snake_case; the chart's are camelCase).
Secrets are left out: they arrive as environment variables.
*/}}
{{- define "livekit-bus-bridge.config" -}}
{{- $v := .Values }}
{{- $livekit := dict
  "url" (required "livekit.url is required" $v.livekit.url)
  "api_key" (required "livekit.apiKey is required" $v.livekit.apiKey)
  "identity" $v.livekit.identity
  "hidden" $v.livekit.hidden
  "leave_deadline_s" $v.livekit.leaveDeadlineSeconds }}
{{- $events := dict
  "data_format" $v.events.dataFormat
  "include" $v.events.include
  "exclude" $v.events.exclude
  "assemble_text_streams" $v.events.assembleTextStreams }}
{{- /* Counts go through int: toYaml writes a large float64 (values are JSON numbers) as 1e+06. */}}
{{- $commands := dict
  "enabled" $v.commands.enabled
  "max_bytes" (int $v.commands.maxBytes)
  "response_timeout_s" $v.commands.responseTimeoutSeconds
  "dedup_window_s" $v.commands.dedupWindowSeconds }}
{{- with $v.commands.allowed }}{{ $_ := set $commands "allowed" . }}{{ end }}
{{- /* The webhook Service is only useful if the bridge accepts webhooks, and vice versa. */}}
{{- $discovery := dict "webhook" $v.webhook.enabled "auto_join" $v.discovery.autoJoin }}
{{- with $v.discovery.listRoomsIntervalSeconds }}{{ $_ := set $discovery "list_rooms_interval_s" . }}{{ end }}
{{- $media := dict "subscribe" $v.media.subscribe }}
{{- with $v.media.recordingsDir }}{{ $_ := set $media "recordings_dir" . }}{{ end }}
{{- with $v.media.publishUrlAllow }}{{ $_ := set $media "publish_url_allow" . }}{{ end }}
{{- $cfg := dict
  "livekit" $livekit
  "rooms" (dict "static" $v.rooms.static)
  "events" $events
  "commands" $commands
  "discovery" $discovery
  "media" $media
  "outbox" (dict "capacity" (int $v.outbox.capacity) "overflow" $v.outbox.overflow "batch_interval_s" $v.outbox.batchIntervalSeconds "max_in_flight" (int $v.outbox.maxInFlight))
  "logging" (dict "level" $v.logging.level "json" $v.logging.json)
  "http" (dict "listen" (printf "0.0.0.0:%d" (int $v.http.port))) }}
{{- with $v.kafka }}
{{- if .enabled }}
{{- if not .bootstrapServers }}{{ fail "kafka.bootstrapServers is required when kafka.enabled" }}{{ end }}
{{- $kafka := dict
  "bootstrap_servers" .bootstrapServers
  "events_topic" .eventsTopic
  "commands_topic" .commandsTopic
  "dead_letter_topic" .deadLetterTopic
  "commands_state_topic" (.commandsStateTopic | default nil)
  "commands_group_id" .commandsGroupId
  "session_timeout_s" .sessionTimeoutSeconds
  "compression_type" .compressionType
  "security_protocol" .securityProtocol }}
{{- if hasPrefix "SASL_" .securityProtocol }}
{{- $_ := set $kafka "sasl_mechanism" .sasl.mechanism }}
{{- $_ := set $kafka "sasl_username" (required "kafka.sasl.username is required with a SASL_* securityProtocol" .sasl.username) }}
{{- end }}
{{- if .tls.caFile }}{{ $_ := set $kafka "ssl_cafile" .tls.caFile }}{{ end }}
{{- if .tls.certFile }}{{ $_ := set $kafka "ssl_certfile" .tls.certFile }}{{ end }}
{{- if .tls.keyFile }}{{ $_ := set $kafka "ssl_keyfile" .tls.keyFile }}{{ end }}
{{- $_ := set $cfg "kafka" $kafka }}
{{- end }}
{{- end }}
{{- with $v.nats }}
{{- if .enabled }}
{{- if not .servers }}{{ fail "nats.servers is required when nats.enabled" }}{{ end }}
{{- $nats := dict
  "servers" .servers
  "subject_prefix" .subjectPrefix
  "jetstream" .jetstream
  "binary_mode" .binaryMode
  "queue_group" .queueGroup }}
{{- with .deadLetterSubject }}{{ $_ := set $nats "dead_letter_subject" . }}{{ end }}
{{- if eq .auth.mode "password" }}
{{- $_ := set $nats "user" (required "nats.auth.user is required with nats.auth.mode password" .auth.user) }}
{{- else if eq .auth.mode "credsFile" }}
{{- $_ := set $nats "creds_file" (required "nats.auth.credsFile is required with nats.auth.mode credsFile" .auth.credsFile) }}
{{- end }}
{{- $_ := set $cfg "nats" $nats }}
{{- end }}
{{- end }}
{{- with $v.ownership }}
{{- if ne .mode "static" }}
{{- $ownership := dict "mode" .mode "handover_timeout_s" .handoverTimeoutSeconds }}
{{- if eq .mode "nats" }}
{{- /* replica_id comes from BRIDGE_OWNERSHIP__REPLICA_ID (the pod name), see livekit-bus-bridge.env. */}}
{{- $_ := set $ownership "lease_ttl_s" .leaseTtlSeconds }}
{{- $_ := set $ownership "bucket" .bucket }}
{{- with .capacity }}{{ $_ := set $ownership "capacity" (int .) }}{{ end }}
{{- end }}
{{- $_ := set $cfg "ownership" $ownership }}
{{- end }}
{{- end }}
{{- toYaml (mergeOverwrite $cfg (deepCopy $v.extraConfig)) }}
{{- end }}

{{/* Combinations of values the bridge cannot run with; each fails the render with the reason. */}}
{{- define "livekit-bus-bridge.validate" -}}
{{- $v := .Values }}
{{- if and (eq $v.ownership.mode "static") (or $v.autoscaling.enabled (gt (int $v.replicaCount) 1)) }}
{{- fail "ownership.mode static joins every room from every pod (the same identity evicts itself): use one replica, or ownership.mode kafka or nats" }}
{{- end }}
{{- if and (eq $v.ownership.mode "kafka") (not $v.kafka.enabled) }}
{{- fail "ownership.mode kafka needs kafka.enabled" }}
{{- end }}
{{- if and (eq $v.ownership.mode "kafka") (not $v.commands.enabled) }}
{{- fail "ownership.mode kafka needs commands.enabled (the command consumer group assigns the rooms)" }}
{{- end }}
{{- if and (eq $v.ownership.mode "nats") (not (and $v.nats.enabled $v.nats.jetstream)) }}
{{- fail "ownership.mode nats needs nats.enabled and nats.jetstream (leases live in JetStream KV)" }}
{{- end }}
{{- if and $v.media.recordingsDir (eq $v.media.recordingsVolume.type "persistentVolumeClaim") (not $v.media.recordingsVolume.claimName) }}
{{- fail "media.recordingsVolume.claimName is required with media.recordingsVolume.type persistentVolumeClaim" }}
{{- end }}
{{- if not (or $v.kafka.enabled $v.nats.enabled) }}
{{- fail "enable at least one bus: kafka.enabled or nats.enabled" }}
{{- end }}
{{- /* SIGTERM: pre-stop sleep, then leave every room (leaveDeadlineSeconds), then flush the buses (5 s). */}}
{{- $preStop := ternary (int $v.webhook.preStopSleepSeconds) 0 $v.webhook.enabled }}
{{- $needed := add $preStop (int $v.livekit.leaveDeadlineSeconds) 5 }}
{{- if le (int $v.terminationGracePeriodSeconds) (int $needed) }}
{{- fail (printf "terminationGracePeriodSeconds must exceed %d s (pre-stop sleep + livekit.leaveDeadlineSeconds + 5 s bus flush)" (int $needed)) }}
{{- end }}
{{- if not $v.existingSecret.name }}
{{- range include "livekit-bus-bridge.secretRefs" . | fromJsonArray }}
{{- if not (index . 2) }}
{{- fail (printf "%s is required (or set existingSecret.name)" (index . 3)) }}
{{- end }}
{{- end }}
{{- end }}
{{- end }}

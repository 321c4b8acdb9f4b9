{{/*
The Lifeline container, and the templates an application chart includes to add it to its pods.

An application chart depends on this chart (mode: sidecar) and, in its pod template:

  metadata:
    labels:      {{- include "lifeline.sidecar.podLabels" $ll | nindent 8 }}
    annotations: {{- include "lifeline.sidecar.podAnnotations" $ll | nindent 8 }}
  spec:
    terminationGracePeriodSeconds: {{ max 30 (include "lifeline.sidecar.terminationGracePeriodSeconds" $ll) }}
    initContainers: {{- include "lifeline.sidecar.initContainers" $ll | nindent 8 }}
    containers:     {{- include "lifeline.sidecar.containers" $ll | nindent 8 }}
      - name: app ...   (talks to http://127.0.0.1:15001 instead of the services)
    volumes:        {{- include "lifeline.sidecar.volumes" $ll | nindent 8 }}

and, in a StatefulSet when graceJournal.storage.type is persistentVolumeClaim,
volumeClaimTemplates: {{- include "lifeline.sidecar.volumeClaimTemplates" $ll | nindent 4 }} (the
journal's claim, and the log's with graceJournal.logVolume).

with `$ll := dict "top" $ "values" .Values.lifeline`. In native mode `initContainers` holds Lifeline
(first, so the app starts only after Lifeline's startup probe passes) and `containers` adds nothing;
in legacy mode it is the other way round. Put the include first in each list.
*/}}

{{/* One Lifeline container. Context: the ctx dict plus "kind": native | legacy | gateway. */}}
{{- define "lifeline.container" -}}
{{- $v := .values -}}
{{- $cfgPath := "/etc/lifeline/lifeline.yaml" -}}
- name: lifeline
  image: {{ include "lifeline.image" . | quote }}
  imagePullPolicy: {{ $v.image.pullPolicy }}
  {{- if eq .kind "native" }}
  restartPolicy: Always
  {{- end }}
  args: ["--log-format", {{ $v.logFormat | quote }}, "run", "--config", {{ $cfgPath | quote }}]
  env:
    - name: RUST_LOG
      value: {{ $v.logLevel | quote }}
  ports:
    - name: lifeline-proxy
      containerPort: {{ $v.ports.proxy }}
      protocol: TCP
    - name: lifeline-admin
      containerPort: {{ $v.ports.admin }}
      protocol: TCP
  startupProbe:
    httpGet: { path: /ready, port: lifeline-admin }
    periodSeconds: {{ $v.probes.startup.periodSeconds }}
    timeoutSeconds: {{ $v.probes.startup.timeoutSeconds }}
    failureThreshold: {{ $v.probes.startup.failureThreshold }}
  readinessProbe:
    httpGet: { path: /ready, port: lifeline-admin }
    periodSeconds: {{ $v.probes.readiness.periodSeconds }}
    timeoutSeconds: {{ $v.probes.readiness.timeoutSeconds }}
    failureThreshold: {{ $v.probes.readiness.failureThreshold }}
  livenessProbe:
    httpGet: { path: /live, port: lifeline-admin }
    periodSeconds: {{ $v.probes.liveness.periodSeconds }}
    timeoutSeconds: {{ $v.probes.liveness.timeoutSeconds }}
    failureThreshold: {{ $v.probes.liveness.failureThreshold }}
  lifecycle:
    {{- if eq .kind "legacy" }}
    # No native ordering: hold the next container until Lifeline is ready.
    postStart:
      exec:
        command: ["/usr/local/bin/lifeline", "wait-ready", "--config", {{ $cfgPath | quote }}, "--wait", "{{ $v.sidecar.legacyStartTimeoutSeconds }}s"]
    {{- end }}
    # preStop only starts draining (/ready fails, the proxy keeps serving); Lifeline exits on
    # SIGTERM after drain_delay + grace_period.{{ if eq .kind "legacy" }} Legacy mode holds the hook so the app's last calls get through.{{ end }}
    preStop:
      exec:
        command: ["/usr/local/bin/lifeline", "drain", "--config", {{ $cfgPath | quote }}{{ if eq .kind "legacy" }}, "--wait", "{{ $v.sidecar.legacyWaitBeforeExitSeconds }}s"{{ end }}]
  resources:
    {{- toYaml $v.resources | nindent 4 }}
  securityContext:
    {{- toYaml $v.securityContext | nindent 4 }}
  terminationMessagePolicy: FallbackToLogsOnError
  volumeMounts:
    - name: lifeline-config
      mountPath: /etc/lifeline
      readOnly: true
    - name: lifeline-secrets
      mountPath: /var/run/lifeline/secrets
      readOnly: true
    - name: lifeline-grace
      mountPath: {{ $v.graceJournal.mountPath }}
    {{- if include "lifeline.logVolume.enabled" . }}
    - name: lifeline-grace-log
      mountPath: {{ $v.graceJournal.logVolume.mountPath }}
    {{- end }}
{{- end -}}

{{/* Volumes of a pod running Lifeline. The grace volume is an emptyDir, or comes from a
     volumeClaimTemplate named lifeline-grace when the journal is persistent; the same goes for
     the log volume (graceJournal.logVolume), lifeline-grace-log, when it is enabled. */}}
{{- define "lifeline.volumes" -}}
{{- $v := .values -}}
{{- include "lifeline.checkGraceVolumes" . -}}
- name: lifeline-config
  configMap:
    name: {{ include "lifeline.configMapName" . }}
- name: lifeline-secrets
  secret:
    secretName: {{ include "lifeline.secretName" . }}
    defaultMode: {{ ternary 288 292 (eq $v.mode "gateway") }}
{{- if eq $v.graceJournal.storage.type "emptyDir" }}
{{ include "lifeline.emptyDirVolume" (dict "name" "lifeline-grace" "emptyDir" $v.graceJournal.storage.emptyDir) }}
{{- end }}
{{- if include "lifeline.logVolume.enabled" . }}
{{- if eq $v.graceJournal.logVolume.storage.type "emptyDir" }}
{{ include "lifeline.emptyDirVolume" (dict "name" "lifeline-grace-log" "emptyDir" $v.graceJournal.logVolume.storage.emptyDir) }}
{{- end }}
{{- end }}
{{- end -}}

{{/* One emptyDir volume. Context: dict "name" NAME "emptyDir" (medium, sizeLimit). */}}
{{- define "lifeline.emptyDirVolume" -}}
{{- $e := .emptyDir | default dict -}}
- name: {{ .name }}
  {{- if or $e.medium $e.sizeLimit }}
  emptyDir:
    {{- with $e.medium }}
    medium: {{ . }}
    {{- end }}
    {{- with $e.sizeLimit }}
    sizeLimit: {{ . }}
    {{- end }}
  {{- else }}
  emptyDir: {}
  {{- end }}
{{- end -}}

{{/* One PersistentVolumeClaim template. Context: dict "name" NAME "claim" (size,
     storageClassName, accessModes). */}}
{{- define "lifeline.claimTemplate" -}}
{{- $p := .claim -}}
- apiVersion: v1
  kind: PersistentVolumeClaim
  metadata:
    name: {{ .name }}
  spec:
    accessModes: {{ toJson $p.accessModes }}
    {{- with $p.storageClassName }}
    storageClassName: {{ . }}
    {{- end }}
    resources:
      requests:
        storage: {{ $p.size }}
{{- end -}}

{{/* The claims of a StatefulSet running Lifeline: lifeline-grace when the journal is persistent,
     and lifeline-grace-log when the log volume is enabled (then persistent too: see
     lifeline.checkGraceVolumes). Both follow the StatefulSet's one
     persistentVolumeClaimRetentionPolicy, graceJournal.storage.persistentVolumeClaim.retentionPolicy. */}}
{{- define "lifeline.volumeClaimTemplates" -}}
{{- $v := .values -}}
{{- include "lifeline.checkGraceVolumes" . -}}
{{- if eq $v.graceJournal.storage.type "persistentVolumeClaim" -}}
{{- include "lifeline.claimTemplate" (dict "name" "lifeline-grace" "claim" $v.graceJournal.storage.persistentVolumeClaim) -}}
{{- if include "lifeline.logVolume.enabled" . }}
{{ include "lifeline.claimTemplate" (dict "name" "lifeline-grace-log" "claim" $v.graceJournal.logVolume.storage.persistentVolumeClaim) -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/* ---- The application chart's entry points (context: dict "top" $ "values" .Values.lifeline) ---- */}}

{{- define "lifeline.sidecar.check" -}}
{{- if ne .values.mode "sidecar" -}}
{{- fail "the lifeline.sidecar.* templates need lifeline.mode: sidecar in the application's values" -}}
{{- end -}}
{{- if and (eq .values.sidecar.mode "native") (semverCompare "<1.29-0" .top.Capabilities.KubeVersion.Version) -}}
{{- fail (printf "native sidecars need Kubernetes >= 1.29 (this cluster: %s); set lifeline.sidecar.mode to legacy or auto" .top.Capabilities.KubeVersion.Version) -}}
{{- end -}}
{{- end -}}

{{- define "lifeline.sidecar.initContainers" -}}
{{- include "lifeline.sidecar.check" . -}}
{{- if include "lifeline.nativeSidecar" . -}}
{{- include "lifeline.container" (dict "kind" "native" "top" .top "values" .values) -}}
{{- end -}}
{{- end -}}

{{- define "lifeline.sidecar.containers" -}}
{{- include "lifeline.sidecar.check" . -}}
{{- if not (include "lifeline.nativeSidecar" .) -}}
{{- include "lifeline.container" (dict "kind" "legacy" "top" .top "values" .values) -}}
{{- end -}}
{{- end -}}

{{- define "lifeline.sidecar.volumes" -}}
{{- include "lifeline.sidecar.check" . -}}
{{- include "lifeline.volumes" . -}}
{{- end -}}

{{/* For a StatefulSet application with graceJournal.storage.type persistentVolumeClaim: the
     journal's claim, and the log's when graceJournal.logVolume is enabled. */}}
{{- define "lifeline.sidecar.volumeClaimTemplates" -}}
{{- include "lifeline.sidecar.check" . -}}
{{- include "lifeline.volumeClaimTemplates" . -}}
{{- end -}}

{{- define "lifeline.sidecar.podLabels" -}}
{{- include "lifeline.podMarkerLabel" . -}}
{{- end -}}

{{- define "lifeline.sidecar.podAnnotations" -}}
{{- include "lifeline.checksumAnnotations" . -}}
{{- end -}}

{{/* The minimum terminationGracePeriodSeconds Lifeline needs; take the max with the app's own. */}}
{{- define "lifeline.sidecar.terminationGracePeriodSeconds" -}}
{{- include "lifeline.terminationGracePeriodSeconds" . -}}
{{- end -}}

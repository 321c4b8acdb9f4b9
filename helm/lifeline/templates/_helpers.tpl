{{/*
Helpers of the Lifeline chart.

Most helpers take a context dict, not the chart root, because application charts call them too
(helm/examples/app): `dict "top" $ "values" .Values.lifeline`. Inside this chart the context is
`dict "top" $ "values" .Values`. `top` gives Release and Capabilities; `values` are Lifeline's
values. Nothing here may read `.top.Chart` or `.top.Values`: in an application chart those are the
application's. The sidecar templates an application uses are in _sidecar.tpl.
*/}}

{{- define "lifeline.name" -}}
{{- .values.nameOverride | default "lifeline" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "lifeline.fullname" -}}
{{- if .values.fullnameOverride -}}
{{- .values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- $name := include "lifeline.name" . -}}
{{- if contains $name .top.Release.Name -}}
{{- .top.Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .top.Release.Name $name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/* Recommended labels (helm.sh chart best practices). Root context: this chart's own objects. */}}
{{- define "lifeline.labels" -}}
{{- $ctx := dict "top" . "values" .Values -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{ include "lifeline.selectorLabels" $ctx }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: lifeline
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/* Selector labels: name and instance only, because selectors are immutable. */}}
{{- define "lifeline.selectorLabels" -}}
app.kubernetes.io/name: {{ include "lifeline.name" . }}
app.kubernetes.io/instance: {{ .top.Release.Name }}
{{- end -}}

{{/* The label every pod running Lifeline carries (gateway pods and application pods alike);
     the PodMonitor selects on it. */}}
{{- define "lifeline.podMarkerLabel" -}}
lifeline/sidecar-of: {{ include "lifeline.fullname" . }}
{{- end -}}

{{- define "lifeline.image" -}}
{{- $i := .values.image -}}
{{- if $i.digest -}}
{{- printf "%s@%s" $i.repository $i.digest -}}
{{- else -}}
{{- printf "%s:%s" $i.repository $i.tag -}}
{{- end -}}
{{- end -}}

{{- define "lifeline.secretName" -}}
{{- if .values.secrets.create -}}
{{- include "lifeline.fullname" . -}}
{{- else if .values.secrets.existingSecret -}}
{{- .values.secrets.existingSecret -}}
{{- else -}}
{{- fail "secrets.create is false: set secrets.existingSecret to the Secret that holds admin-token" -}}
{{- end -}}
{{- end -}}

{{- define "lifeline.configMapName" -}}
{{- include "lifeline.fullname" . -}}
{{- end -}}

{{/* "true" when the sidecar renders as a native sidecar (init container, restartPolicy Always). */}}
{{- define "lifeline.nativeSidecar" -}}
{{- $m := .values.sidecar.mode -}}
{{- if eq $m "native" -}}true
{{- else if eq $m "auto" -}}{{ if semverCompare ">=1.29-0" .top.Capabilities.KubeVersion.Version }}true{{ end }}
{{- end -}}
{{- end -}}

{{/* Seconds in a Lifeline duration string (250ms, 2s, 1.5m, 1h, 1d), as a float. */}}
{{- define "lifeline.seconds" -}}
{{- $s := toString . -}}
{{- if not (regexMatch "^[0-9]+(\\.[0-9]+)?(us|ms|s|m|h|d)$" $s) -}}
{{- fail (printf "%q is not a duration such as 250ms, 2s or 1h" $s) -}}
{{- end -}}
{{- $n := float64 (regexReplaceAll "^([0-9.]+)[a-z]+$" $s "${1}") -}}
{{- $unit := regexReplaceAll "^[0-9.]+([a-z]+)$" $s "${1}" -}}
{{- $factor := get (dict "us" 0.000001 "ms" 0.001 "s" 1.0 "m" 60.0 "h" 3600.0 "d" 86400.0) $unit -}}
{{- mulf $n $factor -}}
{{- end -}}

{{/* Lifeline's own shutdown budget: shutdown.drain_delay + shutdown.grace_period (their defaults
     are 5s and 30s), plus the legacy preStop wait, in whole seconds rounded up. */}}
{{- define "lifeline.shutdownSeconds" -}}
{{- $sd := (.values.config | default dict).shutdown | default dict -}}
{{- $drain := include "lifeline.seconds" ($sd.drain_delay | default "5s") | float64 -}}
{{- $grace := include "lifeline.seconds" ($sd.grace_period | default "30s") | float64 -}}
{{- $total := addf $drain $grace -}}
{{- if not (include "lifeline.nativeSidecar" .) -}}
{{- if eq .values.mode "sidecar" -}}
{{- $total = addf $total (float64 .values.sidecar.legacyWaitBeforeExitSeconds) -}}
{{- end -}}
{{- end -}}
{{- ceil $total | int -}}
{{- end -}}

{{/* terminationGracePeriodSeconds: above Lifeline's shutdown budget, never at or below it. */}}
{{- define "lifeline.terminationGracePeriodSeconds" -}}
{{- $budget := include "lifeline.shutdownSeconds" . | int -}}
{{- $set := int .values.terminationGracePeriodSeconds -}}
{{- if eq $set 0 -}}
{{- add $budget 10 -}}
{{- else if le $set $budget -}}
{{- fail (printf "terminationGracePeriodSeconds (%d) must be above Lifeline's shutdown budget of %d s (config.shutdown.drain_delay + config.shutdown.grace_period%s); raise it or set it to 0 to derive it" $set $budget (ternary "" " + sidecar.legacyWaitBeforeExitSeconds" (eq (include "lifeline.nativeSidecar" .) "true"))) -}}
{{- else -}}
{{- $set -}}
{{- end -}}
{{- end -}}

{{/* "true" when graceJournal.logVolume is enabled. */}}
{{- define "lifeline.logVolume.enabled" -}}
{{- if ((.values.graceJournal.logVolume | default dict).enabled) -}}true{{- end -}}
{{- end -}}

{{/* "true" when the absolute path .path is strictly inside the directory .dir (by path
     components: /var/lib/lifeline-log is not inside /var/lib/lifeline). */}}
{{- define "lifeline.pathUnder" -}}
{{- $path := clean (toString .path) -}}
{{- $dir := clean (toString .dir) | trimSuffix "/" -}}
{{- if and (isAbs $path) (hasPrefix (printf "%s/" $dir) $path) -}}true{{- end -}}
{{- end -}}

{{/* Refuses grace volume settings that would lose or hide settlements. The log volume must be
     apart from the journal volume, and exactly as lasting: Lifeline refuses to start when a log
     directory the journal recorded is missing (it would hide the items it held), so an emptyDir
     log beside a persistent journal stops the pod after every pod deletion, and a persistent log
     beside an emptyDir journal outlives it. */}}
{{- define "lifeline.checkGraceVolumes" -}}
{{- $j := .values.graceJournal -}}
{{- if include "lifeline.logVolume.enabled" . -}}
{{- $log := $j.logVolume -}}
{{- $a := clean $j.mountPath -}}
{{- $b := clean $log.mountPath -}}
{{- if or (eq $a $b) (include "lifeline.pathUnder" (dict "path" $a "dir" $b)) (include "lifeline.pathUnder" (dict "path" $b "dir" $a)) -}}
{{- fail (printf "graceJournal.logVolume.mountPath (%s) must be a directory apart from graceJournal.mountPath (%s), neither equal to it nor one inside the other: each volume would hide the other's files" $log.mountPath $j.mountPath) -}}
{{- end -}}
{{- if ne $log.storage.type $j.storage.type -}}
{{- if eq $j.storage.type "persistentVolumeClaim" -}}
{{- fail (printf "graceJournal.logVolume.storage.type is %s but graceJournal.storage.type is persistentVolumeClaim: set graceJournal.logVolume.storage.type to persistentVolumeClaim. The log must be as persistent as the journal: after a pod deletion an emptyDir log is gone while the journal's claim remains, and Lifeline then refuses to start (the log directory the journal recorded is missing) rather than hide the settlements it held" $log.storage.type) -}}
{{- else -}}
{{- fail (printf "graceJournal.logVolume.storage.type is %s but graceJournal.storage.type is %s: the log must not outlive its journal (after a pod deletion a new, empty journal would meet an old log); put the journal on a persistentVolumeClaim too, or the log on an emptyDir" $log.storage.type $j.storage.type) -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/* Checks every grace policy's store paths against the pod's volumes (the root filesystem is
     read-only, so they are the only places Lifeline can write) and, with graceJournal.logVolume,
     puts each policy's write-ahead log on it: store.log_dir defaults to <logVolume.mountPath>/<policy>;
     one set in config must be a directory under logVolume.mountPath. Changes $cfg in place. */}}
{{- define "lifeline.graceStores" -}}
{{- $j := .values.graceJournal -}}
{{- $logOn := include "lifeline.logVolume.enabled" . -}}
{{- $seen := dict -}}
{{- range $name, $p := (.cfg.grace | default dict) -}}
{{- if and (kindIs "map" $p) (kindIs "map" $p.store) -}}
{{- $store := $p.store -}}
{{- $key := printf "config.grace.%s.store" $name -}}
{{- if not (include "lifeline.pathUnder" (dict "path" $store.sqlite "dir" $j.mountPath)) -}}
{{- fail (printf "%s.sqlite (%v) must be an absolute path under graceJournal.mountPath (%s): the journal volume is the only place for it (the root filesystem is read-only)" $key $store.sqlite $j.mountPath) -}}
{{- end -}}
{{- if $logOn -}}
{{- $logMount := $j.logVolume.mountPath -}}
{{- if $store.log_dir -}}
{{- if not (include "lifeline.pathUnder" (dict "path" $store.log_dir "dir" $logMount)) -}}
{{- fail (printf "%s.log_dir (%v) must be a directory under graceJournal.logVolume.mountPath (%s), not the mount point itself (an empty volume mounted in place of the log must look missing, so that Lifeline refuses to start rather than hide settlements); or leave it out: the chart sets %s/%s" $key $store.log_dir $logMount (clean $logMount | trimSuffix "/") $name) -}}
{{- end -}}
{{- else -}}
{{- if not (regexMatch "^[A-Za-z0-9_-][A-Za-z0-9._-]*$" $name) -}}
{{- fail (printf "%s.log_dir: the grace policy name %q cannot name a directory; set log_dir to a directory under graceJournal.logVolume.mountPath (%s)" $key $name $logMount) -}}
{{- end -}}
{{- $_ := set $store "log_dir" (printf "%s/%s" (clean $logMount | trimSuffix "/") $name) -}}
{{- end -}}
{{- else if $store.log_dir -}}
{{- if not (include "lifeline.pathUnder" (dict "path" $store.log_dir "dir" $j.mountPath)) -}}
{{- fail (printf "%s.log_dir (%v) is on no volume of the pod: put it under graceJournal.mountPath (%s), or enable graceJournal.logVolume and put it under graceJournal.logVolume.mountPath" $key $store.log_dir $j.mountPath) -}}
{{- end -}}
{{- end -}}
{{- with $store.log_dir -}}
{{- $dir := clean (toString .) -}}
{{- if hasKey $seen $dir -}}
{{- fail (printf "%s.log_dir (%s) is also policy %s's log directory: two grace policies cannot share one" $key $dir (get $seen $dir)) -}}
{{- end -}}
{{- $_ := set $seen $dir $name -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/* The Lifeline config file rendered from .values.config. The chart owns the keys that must
     match the pod: listen, admin.listen, admin.token_file; chaos follows chaos.enabled; with
     graceJournal.logVolume each grace policy's store.log_dir is on the log volume. */}}
{{- define "lifeline.configYaml" -}}
{{- $v := .values -}}
{{- $cfg := deepCopy ($v.config | default dict) -}}
{{- if hasKey $cfg "listen" -}}
{{- fail "config.listen is set by the chart (from ports.proxy and mode); remove it from config" -}}
{{- end -}}
{{- $admin := deepCopy ($cfg.admin | default dict) -}}
{{- range $k := list "listen" "token_file" -}}
{{- if hasKey $admin $k -}}
{{- fail (printf "config.admin.%s is set by the chart (from ports.admin and secrets); remove it from config" $k) -}}
{{- end -}}
{{- end -}}
{{- $host := ternary "127.0.0.1" "0.0.0.0" (eq $v.mode "sidecar") -}}
{{- $_ := set $cfg "listen" (printf "%s:%d" $host (int $v.ports.proxy)) -}}
{{- $_ := set $admin "listen" (printf "0.0.0.0:%d" (int $v.ports.admin)) -}}
{{- $_ := set $admin "token_file" "/var/run/lifeline/secrets/admin-token" -}}
{{- $_ := set $cfg "admin" $admin -}}
{{- $chaos := $cfg.chaos | default dict -}}
{{- if $v.chaos.enabled -}}
{{- $_ := set $cfg "chaos" (merge (dict "enabled" true) $chaos) -}}
{{- else if $chaos.enabled -}}
{{- fail "config.chaos.enabled is true but chaos.enabled is false: fault injection is switched on with the top-level chaos.enabled" -}}
{{- end -}}
{{- include "lifeline.checkGraceVolumes" . -}}
{{- include "lifeline.graceStores" (dict "values" $v "cfg" $cfg) -}}
{{- toYaml $cfg -}}
{{- end -}}

{{/* Pod annotations that roll the pods when the config or the Secret's inputs change. (Lifeline
     also hot-reloads the mounted file; the roll makes the change visible in the rollout history.) */}}
{{- define "lifeline.checksumAnnotations" -}}
checksum/lifeline-config: {{ include "lifeline.configYaml" . | sha256sum }}
checksum/lifeline-secret: {{ pick .values.secrets "create" "existingSecret" "adminToken" "graceEncryptionKey" "graceSigningKey" | toJson | sha256sum }}
{{- end -}}

{{- define "lifeline.serviceAccountName" -}}
{{- $sa := .values.gateway.serviceAccount -}}
{{- if $sa.create -}}
{{- $sa.name | default (include "lifeline.fullname" .) -}}
{{- else -}}
{{- $sa.name | default "default" -}}
{{- end -}}
{{- end -}}

{{- define "lifeline.testPodLabels" -}}
app.kubernetes.io/instance: {{ .top.Release.Name }}
app.kubernetes.io/component: helm-test
{{- end -}}

{{/* The grace-journal storage warning of NOTES.txt; application charts include it in theirs. */}}
{{- define "lifeline.notes.graceStorage" -}}
GRACE JOURNAL STORAGE: {{ .values.graceJournal.storage.type }} at {{ .values.graceJournal.mountPath }}
{{- if eq .values.graceJournal.storage.type "emptyDir" }}
  WARNING: an emptyDir survives a container kill (the SIGKILL drill passes) but NOT a pod deletion.
  Eviction, a rollout or a node loss deletes provisional settlements that were not forwarded yet.
  For production payment traffic use graceJournal.storage.type=persistentVolumeClaim.
{{- else }}
  One PersistentVolumeClaim per pod (lifeline-grace-<pod>{{ if include "lifeline.logVolume.enabled" . }}, and lifeline-grace-log-<pod> for the log{{ end }}), retention on delete/scale-in:
  {{ .values.graceJournal.storage.persistentVolumeClaim.retentionPolicy.whenDeleted }}/{{ .values.graceJournal.storage.persistentVolumeClaim.retentionPolicy.whenScaled }}.
  A claim left by a scale-in still holds settlements: read it with `lifeline grace status --db FILE{{ if include "lifeline.logVolume.enabled" . }} --log-dir DIR{{ end }}`.
{{- end }}
{{- if include "lifeline.logVolume.enabled" . }}
GRACE LOG VOLUME: {{ .values.graceJournal.logVolume.storage.type }} at {{ .values.graceJournal.logVolume.mountPath }} (each grace policy's store.log_dir is under it).
  Lifeline refuses to start if a log directory its journal recorded is missing: keep this volume
  with the journal's. Copy both (the .db, .db-wal and the policy's log directory) to read a journal offline.
{{- if not (.values.config | default dict).grace }}
  No grace policy is configured (config.grace): the log volume is unused.
{{- end }}
{{- end }}
{{- end -}}

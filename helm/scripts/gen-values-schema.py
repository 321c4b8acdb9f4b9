#!/usr/bin/env python3
"""Writes helm/lifeline/values.schema.json: the chart's values schema, written out below, with the
Lifeline config schema (`lifeline config-schema`, read from stdin) embedded for `config`.

Run it through scripts/gen-helm-schema. The embedded part is exact: every definition of the config
schema is copied under `definitions` unchanged (so its `#/definitions/...` references still
resolve), and its root becomes `definitions.LifelineConfig`. tests/it/helm.rs fails when the
embedded copy differs from the current `lifeline config-schema` output.
"""
import json
import pathlib
import sys


def obj(props, required=(), **extra):
    s = {"type": "object", "additionalProperties": False, "properties": props}
    if required:
        s["required"] = list(required)
    s.update(extra)
    return s


def string(desc=None, **extra):
    s = {"type": "string"}
    if desc:
        s["description"] = desc
    s.update(extra)
    return s


def integer(desc=None, minimum=None, maximum=None):
    s = {"type": "integer"}
    if desc:
        s["description"] = desc
    if minimum is not None:
        s["minimum"] = minimum
    if maximum is not None:
        s["maximum"] = maximum
    return s


BOOL = {"type": "boolean"}
PORT = integer(minimum=1, maximum=65535)
QUANTITY = {"type": ["string", "integer"], "pattern": "^[0-9]+(\\.[0-9]+)?(m|k|M|G|T|P|E|Ki|Mi|Gi|Ti|Pi|Ei)?$"}
PROM_DURATION = string("A Prometheus duration such as 30s, 5m or 1h.", pattern="^[0-9]+(ms|s|m|h|d|w|y)$")
LABELS = {"type": "object", "additionalProperties": {"type": "string"}}
K8S_OBJECT = {"type": "object", "description": "A Kubernetes object, passed through as is (Kubernetes validates its content)."}
K8S_LIST = {"type": "array", "items": {"type": "object"}, "description": "Kubernetes objects, passed through as is."}
SECCOMP = obj({"type": string(enum=["RuntimeDefault", "Localhost", "Unconfined"]), "localhostProfile": string()}, ["type"])
UID = {"type": ["integer", "null"], "minimum": 0}
PROBE = obj({
    "periodSeconds": integer(minimum=1),
    "timeoutSeconds": integer(minimum=1),
    "failureThreshold": integer(minimum=1),
}, ["periodSeconds", "timeoutSeconds", "failureThreshold"])
ACCESS_MODES = {"type": "array", "minItems": 1, "items": string(enum=["ReadWriteOnce", "ReadWriteOncePod", "ReadWriteMany", "ReadOnlyMany"])}
MONITOR = obj({
    "enabled": BOOL,
    "interval": PROM_DURATION,
    "scrapeTimeout": PROM_DURATION,
    "labels": LABELS,
}, ["enabled", "interval", "scrapeTimeout", "labels"])

schema = {
    "$schema": "http://json-schema.org/draft-07/schema#",
    "title": "Values of the lifeline chart",
    "description": "Unknown keys and wrong types are errors everywhere. `config` is the Lifeline config file, checked with the schema `lifeline config-schema` prints (embedded under definitions by scripts/gen-helm-schema).",
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "global": {"type": "object", "description": "Helm passes a parent chart's globals to every subchart."},
        "mode": string("gateway: this release runs Lifeline behind a Service. sidecar: an application chart adds it to its pods.", enum=["gateway", "sidecar"]),
        "nameOverride": string(),
        "fullnameOverride": string(),
        "commonLabels": LABELS,
        "image": obj({
            "repository": string(minLength=1),
            "tag": string(minLength=1),
            "digest": string(pattern="^$|^sha256:[a-f0-9]{64}$"),
            "pullPolicy": string(enum=["Always", "IfNotPresent", "Never"]),
        }, ["repository", "tag", "pullPolicy"]),
        "imagePullSecrets": {"type": "array", "items": obj({"name": string(minLength=1)}, ["name"])},
        "logFormat": string(enum=["text", "json"]),
        "logLevel": string(minLength=1),
        "ports": obj({"proxy": PORT, "admin": PORT}, ["proxy", "admin"]),
        "sidecar": obj({
            "mode": string("native: init container with restartPolicy Always (Kubernetes >= 1.29). legacy: ordinary container. auto: native on >= 1.29.", enum=["native", "legacy", "auto"]),
            "legacyWaitBeforeExitSeconds": integer(minimum=0),
            "legacyStartTimeoutSeconds": integer(minimum=1),
        }, ["mode"]),
        "gateway": obj({
            "replicas": integer(minimum=0),
            "strategy": obj({
                "type": string(enum=["RollingUpdate", "Recreate"]),
                "rollingUpdate": obj({
                    "maxUnavailable": {"type": ["integer", "string"]},
                    "maxSurge": {"type": ["integer", "string"]},
                }),
            }, ["type"]),
            "service": obj({
                "type": string(enum=["ClusterIP", "NodePort", "LoadBalancer"]),
                "port": PORT,
                "annotations": LABELS,
            }, ["type", "port"]),
            "podAnnotations": LABELS,
            "podLabels": LABELS,
            "podSecurityContext": obj({
                "runAsNonRoot": {"const": True, "description": "Lifeline never runs as root."},
                "runAsUser": UID,
                "runAsGroup": UID,
                "fsGroup": UID,
                "fsGroupChangePolicy": string(enum=["Always", "OnRootMismatch"]),
                "supplementalGroups": {"type": "array", "items": {"type": "integer"}},
                "seccompProfile": SECCOMP,
                "seLinuxOptions": K8S_OBJECT,
                "appArmorProfile": K8S_OBJECT,
                "sysctls": K8S_LIST,
            }, ["runAsNonRoot"]),
            "nodeSelector": LABELS,
            "tolerations": K8S_LIST,
            "affinity": K8S_OBJECT,
            "topologySpreadConstraints": K8S_LIST,
            "priorityClassName": string(),
            "serviceAccount": obj({"create": BOOL, "name": string(), "annotations": LABELS}, ["create"]),
        }, ["replicas", "service"]),
        "terminationGracePeriodSeconds": integer("0 derives it from Lifeline's shutdown budget; otherwise it must exceed that budget.", minimum=0),
        "resources": obj({
            "requests": {"type": "object", "additionalProperties": QUANTITY, "propertyNames": {"enum": ["cpu", "memory", "ephemeral-storage"]}},
            "limits": {"type": "object", "additionalProperties": QUANTITY, "propertyNames": {"enum": ["cpu", "memory", "ephemeral-storage"]}},
        }),
        "securityContext": obj({
            "runAsNonRoot": {"const": True},
            "runAsUser": UID,
            "runAsGroup": UID,
            "allowPrivilegeEscalation": {"const": False},
            "readOnlyRootFilesystem": {"const": True, "description": "The grace journal lives on its own volume; the root filesystem stays read-only."},
            "privileged": {"const": False},
            "capabilities": obj({
                "drop": {"type": "array", "contains": {"const": "ALL"}, "items": {"type": "string"}},
                "add": {"type": "array", "maxItems": 0, "description": "Lifeline needs no capability."},
            }, ["drop"]),
            "seccompProfile": SECCOMP,
            "seLinuxOptions": K8S_OBJECT,
            "appArmorProfile": K8S_OBJECT,
        }, ["runAsNonRoot", "allowPrivilegeEscalation", "readOnlyRootFilesystem", "capabilities"]),
        "probes": obj({"startup": PROBE, "readiness": PROBE, "liveness": PROBE}, ["startup", "readiness", "liveness"]),
        "secrets": obj({
            "create": BOOL,
            "existingSecret": string("A Secret you manage, with the key admin-token (and optionally grace-encryption-key, grace-signing-key)."),
            "adminToken": string(),
            "graceEncryptionKey": string(),
            "graceSigningKey": string(),
        }, ["create"], **{
            "if": {"properties": {"create": {"const": False}}},
            "then": {"properties": {"existingSecret": {"minLength": 1}}, "required": ["existingSecret"]},
        }),
        "graceJournal": obj({
            "mountPath": string(pattern="^/"),
            "storage": obj({
                "type": string("emptyDir survives a container kill, not a pod deletion. persistentVolumeClaim: one claim per pod (gateway: a StatefulSet).", enum=["emptyDir", "persistentVolumeClaim"]),
                "emptyDir": obj({"medium": string(enum=["", "Memory"]), "sizeLimit": QUANTITY}),
                "persistentVolumeClaim": obj({
                    "size": QUANTITY,
                    "storageClassName": string(),
                    "accessModes": ACCESS_MODES,
                    "retentionPolicy": obj({
                        "whenDeleted": string(enum=["Retain", "Delete"]),
                        "whenScaled": string(enum=["Retain", "Delete"]),
                    }, ["whenDeleted", "whenScaled"]),
                }, ["size", "accessModes", "retentionPolicy"]),
            }, ["type"]),
            "logVolume": obj({
                "enabled": {"type": "boolean", "description": "A second volume, lifeline-grace-log, for the journal's write-ahead log (store.log_dir of every grace policy)."},
                "mountPath": string(pattern="^/"),
                "storage": obj({
                    "type": string("Must equal graceJournal.storage.type: the log must be as persistent as the journal (the templates check it).", enum=["emptyDir", "persistentVolumeClaim"]),
                    "emptyDir": obj({"medium": string(enum=["", "Memory"]), "sizeLimit": QUANTITY}),
                    "persistentVolumeClaim": obj({
                        "size": QUANTITY,
                        "storageClassName": string(),
                        "accessModes": ACCESS_MODES,
                    }, ["size", "accessModes"]),
                }, ["type"]),
            }, ["enabled", "mountPath", "storage"]),
        }, ["mountPath", "storage"]),
        "podDisruptionBudget": obj({
            "enabled": BOOL,
            "maxUnavailable": {"type": ["integer", "string"], "pattern": "^[0-9]+%$", "minimum": 0},
            "unhealthyPodEvictionPolicy": string(enum=["IfHealthyBudget", "AlwaysAllow"]),
        }, ["enabled"]),
        "metrics": obj({
            "podMonitor": MONITOR,
            "serviceMonitor": MONITOR,
            "prometheusRule": obj({
                "enabled": BOOL,
                "labels": LABELS,
                "breakerOpenFor": PROM_DURATION,
                "breakerOpenValue": {"type": "number"},
                "failedOverFor": PROM_DURATION,
                "unavailableFor": PROM_DURATION,
                "graceQueueDepth": integer(minimum=0),
                "graceOldestAgeSeconds": integer(minimum=1),
                "graceCommitP99Seconds": {"type": "number", "exclusiveMinimum": 0},
                "notReadyFor": PROM_DURATION,
            }, ["enabled"]),
            "dashboard": obj({"enabled": BOOL, "labels": LABELS, "annotations": LABELS}, ["enabled"]),
        }),
        "networkPolicy": obj({
            "enabled": BOOL,
            "proxyFrom": K8S_LIST,
            "adminFrom": K8S_LIST,
            "egress": K8S_LIST,
        }, ["enabled"]),
        "chaos": obj({"enabled": {"type": "boolean", "description": "Fault injection for drills; off unless set."}}, ["enabled"]),
        "tests": obj({"enabled": BOOL, "image": string(minLength=1)}, ["enabled"]),
        "config": {"$ref": "#/definitions/LifelineConfig"},
    },
    "required": ["mode", "image", "ports", "sidecar", "secrets", "graceJournal", "config", "chaos"],
}

config_schema = json.load(sys.stdin)
definitions = dict(config_schema.get("definitions", {}))
if "LifelineConfig" in definitions:
    sys.exit("gen-values-schema: the config schema already defines LifelineConfig; rename the embedding")
root = {k: v for k, v in config_schema.items() if k not in ("$schema", "title", "definitions")}
definitions["LifelineConfig"] = root
schema["definitions"] = definitions

out = pathlib.Path(__file__).resolve().parent.parent / "lifeline" / "values.schema.json"
out.write_text(json.dumps(schema, indent=2) + "\n")
print(f"gen-values-schema: wrote {out}", file=sys.stderr)

#!/usr/bin/env python3
"""Writes helm/lifeline/dashboards/lifeline.json, the Grafana dashboard the chart ships.

Generated rather than hand-edited so every panel uses the same selectors. Run it after changing a
panel: python3 helm/scripts/gen-dashboard.py
"""
import json
import pathlib

SEL = 'namespace=~"$namespace", pod=~"$pod"'


def panel(pid, title, exprs, x, y, unit="short", kind="timeseries", w=12, h=8, description=""):
    return {
        "id": pid,
        "type": kind,
        "title": title,
        "description": description,
        "datasource": {"type": "prometheus", "uid": "${datasource}"},
        "gridPos": {"x": x, "y": y, "w": w, "h": h},
        "fieldConfig": {"defaults": {"unit": unit}, "overrides": []},
        "options": {"legend": {"displayMode": "table", "placement": "bottom"}} if kind == "timeseries" else {},
        "targets": [
            {"refId": chr(65 + i), "expr": e, "legendFormat": legend, "datasource": {"type": "prometheus", "uid": "${datasource}"}}
            for i, (e, legend) in enumerate(exprs)
        ],
    }


panels = [
    panel(1, "Requests per second by route and outcome",
          [(f'sum by (route, outcome) (rate(lifeline_requests_total{{{SEL}}}[$__rate_interval]))', "{{route}} {{outcome}}")],
          0, 0, "reqps"),
    panel(2, "Latency p50 / p99 by route",
          [(f'histogram_quantile(0.5, sum by (le, route) (rate(lifeline_request_duration_seconds_bucket{{{SEL}}}[$__rate_interval])))', "p50 {{route}}"),
           (f'histogram_quantile(0.99, sum by (le, route) (rate(lifeline_request_duration_seconds_bucket{{{SEL}}}[$__rate_interval])))', "p99 {{route}}")],
          12, 0, "s"),
    panel(3, "Circuit breaker state by cluster",
          [(f'max by (cluster) (lifeline_breaker_state{{{SEL}}})', "{{cluster}}")],
          0, 8, "short", description="lifeline_breaker_state: 0 closed, 1 open, 2 half-open."),
    panel(4, "Failover: priority in use by cluster",
          [(f'max by (cluster) (lifeline_failover_priority{{{SEL}}})', "{{cluster}}")],
          12, 8, "short", description="0 is the primary site; above 0 the cluster has failed over; -1: no usable endpoint (failing fast)."),
    panel(5, "Upstream attempts by cluster and result",
          [(f'sum by (cluster, result) (rate(lifeline_upstream_requests_total{{{SEL}}}[$__rate_interval]))', "{{cluster}} {{result}}")],
          0, 16, "reqps"),
    panel(6, "Requests in flight",
          [(f'sum by (pod) (lifeline_requests_in_flight{{{SEL}}})', "{{pod}}")],
          12, 16, "short"),
    panel(7, "Grace journal depth",
          [(f'sum by (pod) (lifeline_grace_queue_depth{{{SEL}}})', "{{pod}}")],
          0, 24, "short", w=8, description="Provisional settlements waiting to be forwarded."),
    panel(8, "Oldest grace item age",
          [(f'max by (pod) (lifeline_grace_oldest_age_seconds{{{SEL}}})', "{{pod}}")],
          8, 24, "s", w=8),
    panel(9, "Grace items needing review",
          [(f'sum(lifeline_grace_needs_review{{{SEL}}})', "needs review")],
          16, 24, "short", kind="stat", w=8),
    panel(10, "Config reloads by result",
          [(f'sum by (result) (increase(lifeline_config_reloads_total{{{SEL}}}[$__rate_interval]))', "{{result}}")],
          0, 32, "short"),
    panel(11, "Ready Lifeline containers",
          [(f'sum(lifeline_ready{{{SEL}}})', "ready"), (f'count(lifeline_ready{{{SEL}}})', "total")],
          12, 32, "short"),
]

dashboard = {
    "uid": "lifeline-overview",
    "title": "Lifeline",
    "description": "Lifeline sidecars and gateways: traffic, breakers, failover, offline grace, config reloads.",
    "tags": ["lifeline"],
    "timezone": "browser",
    "schemaVersion": 39,
    "version": 1,
    "editable": True,
    "refresh": "30s",
    "time": {"from": "now-3h", "to": "now"},
    "templating": {"list": [
        {"name": "datasource", "type": "datasource", "query": "prometheus", "label": "Data source"},
        {"name": "namespace", "type": "query", "label": "Namespace", "includeAll": True, "multi": True,
         "datasource": {"type": "prometheus", "uid": "${datasource}"},
         "query": {"query": "label_values(lifeline_ready, namespace)", "refId": "namespace"}, "refresh": 2},
        {"name": "pod", "type": "query", "label": "Pod", "includeAll": True, "multi": True,
         "datasource": {"type": "prometheus", "uid": "${datasource}"},
         "query": {"query": 'label_values(lifeline_ready{namespace=~"$namespace"}, pod)', "refId": "pod"}, "refresh": 2},
    ]},
    "panels": panels,
}

out = pathlib.Path(__file__).resolve().parent.parent / "lifeline" / "dashboards" / "lifeline.json"
out.write_text(json.dumps(dashboard, indent=2) + "\n")
print(f"wrote {out}")

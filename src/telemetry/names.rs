//! Every metric Lifeline exports, with its help text, in one place.
//!
//! One prefix, `lifeline_`; counters end in `_total`, durations in `_seconds`. Labels come from
//! bounded sets only (route and cluster names from config, endpoint addresses, outcome codes),
//! never raw paths or card numbers.

pub const REQUESTS_TOTAL: &str = "lifeline_requests_total";
pub const REQUEST_DURATION_SECONDS: &str = "lifeline_request_duration_seconds";
pub const REQUESTS_IN_FLIGHT: &str = "lifeline_requests_in_flight";
pub const UPSTREAM_REQUESTS_TOTAL: &str = "lifeline_upstream_requests_total";
pub const CONFIG_RELOADS_TOTAL: &str = "lifeline_config_reloads_total";
pub const CONFIG_LAST_RELOAD_SUCCESS: &str = "lifeline_config_last_reload_success";
pub const READY: &str = "lifeline_ready";
pub const GRACE_QUEUE_DEPTH: &str = "lifeline_grace_queue_depth";
pub const GRACE_OLDEST_AGE_SECONDS: &str = "lifeline_grace_oldest_age_seconds";
pub const GRACE_OUTSTANDING_FEN: &str = "lifeline_grace_outstanding_fen";
pub const GRACE_NEEDS_REVIEW: &str = "lifeline_grace_needs_review";
pub const GRACE_FORCED: &str = "lifeline_grace_forced";
pub const GRACE_ACCEPTED_TOTAL: &str = "lifeline_grace_accepted_total";
pub const GRACE_REFUSED_TOTAL: &str = "lifeline_grace_refused_total";
pub const GRACE_FORWARDED_TOTAL: &str = "lifeline_grace_forwarded_total";
pub const GRACE_DUPLICATES_SUPPRESSED_TOTAL: &str = "lifeline_grace_duplicates_suppressed_total";
pub const GRACE_UNKNOWN_OUTCOMES_TOTAL: &str = "lifeline_grace_unknown_outcomes_total";
pub const GRACE_TRANSITIONS_TOTAL: &str = "lifeline_grace_transitions_total";
pub const GRACE_FSYNC_SECONDS: &str = "lifeline_grace_fsync_seconds";
pub const GRACE_COMMIT_SECONDS: &str = "lifeline_grace_commit_seconds";
pub const ENDPOINT_HEALTHY: &str = "lifeline_endpoint_healthy";
pub const ENDPOINT_EJECTED: &str = "lifeline_endpoint_ejected";
pub const FAILOVER_PRIORITY: &str = "lifeline_failover_priority";
pub const PRIORITY_SHARE: &str = "lifeline_priority_load_share";
pub const FAILOVERS_TOTAL: &str = "lifeline_failovers_total";
pub const HEALTH_CHECKS_TOTAL: &str = "lifeline_health_checks_total";
pub const EJECTIONS_TOTAL: &str = "lifeline_ejections_total";
pub const FAULTS_INJECTED_TOTAL: &str = "lifeline_faults_injected_total";
pub const BREAKER_STATE: &str = "lifeline_breaker_state";
pub const BREAKER_TRANSITIONS_TOTAL: &str = "lifeline_breaker_transitions_total";
pub const RETRIES_TOTAL: &str = "lifeline_retries_total";
pub const RETRY_BUDGET_EXHAUSTED_TOTAL: &str = "lifeline_retry_budget_exhausted_total";
pub const REJECTED_TOTAL: &str = "lifeline_rejected_total";
pub const MEMORY_RELEASES_TOTAL: &str = "lifeline_memory_releases_total";

/// (name, help) of every metric, registered at startup so `/metrics` documents itself.
pub const ALL: &[(&str, &str)] = &[
    (REQUESTS_TOTAL, "Requests answered, by route, cluster and outcome (status class or Lifeline error code)."),
    (REQUEST_DURATION_SECONDS, "Time from request received to response headers sent, by route and cluster."),
    (REQUESTS_IN_FLIGHT, "Requests currently being served by the proxy listener."),
    (UPSTREAM_REQUESTS_TOTAL, "Attempts sent to upstream endpoints, by cluster, endpoint and result."),
    (CONFIG_RELOADS_TOTAL, "Config reload attempts by result (ok, error)."),
    (CONFIG_LAST_RELOAD_SUCCESS, "1 if the last config reload succeeded, 0 if it was rejected."),
    (READY, "1 while the sidecar is ready to take traffic, 0 while starting or draining."),
    (GRACE_QUEUE_DEPTH, "Grace items not yet settled, declined or cancelled, by policy."),
    (GRACE_OLDEST_AGE_SECONDS, "Age of the oldest outstanding grace item, by policy."),
    (GRACE_OUTSTANDING_FEN, "Provisional amount (fen) of outstanding grace items, by policy."),
    (GRACE_NEEDS_REVIEW, "Grace items waiting for an operator (expired or given up), by policy."),
    (GRACE_FORCED, "1 while an operator forces grace on, by policy."),
    (GRACE_ACCEPTED_TOTAL, "Settlements journaled with a provisional receipt, by policy and reason."),
    (GRACE_REFUSED_TOTAL, "Settlements refused grace, by policy and the limit that refused them."),
    (
        GRACE_FORWARDED_TOTAL,
        "Forward attempts by policy and outcome (settled, declined, retry, unknown, not_sent, needs_review).",
    ),
    (GRACE_DUPLICATES_SUPPRESSED_TOTAL, "Requests answered from the journal for an Idempotency-Key already journaled."),
    (GRACE_UNKNOWN_OUTCOMES_TOTAL, "Settlements sent without an answer (resolved by query before any resend)."),
    (GRACE_TRANSITIONS_TOTAL, "Grace item state transitions, by target state."),
    (GRACE_FSYNC_SECONDS, "Duration of one journal group commit (COMMIT with fsync), shared by its batch."),
    (GRACE_COMMIT_SECONDS, "Time from a settlement reaching the journal to its durable answer: queueing behind earlier groups, key lookup, limits and the log write."),
    (ENDPOINT_HEALTHY, "1 while active checks (if any) say the endpoint is healthy and past its failback hold, by cluster and endpoint."),
    (ENDPOINT_EJECTED, "1 while passive outlier detection has the endpoint ejected, by cluster and endpoint."),
    (FAILOVER_PRIORITY, "The most preferred priority taking traffic (0 = primary), -1 when failing fast, by cluster."),
    (PRIORITY_SHARE, "Share of a cluster's traffic planned for each priority (0..1), by cluster and priority."),
    (FAILOVERS_TOTAL, "Changes of the active priority, by cluster and direction (failover, failback)."),
    (HEALTH_CHECKS_TOTAL, "Active health checks, by cluster and result (pass, fail)."),
    (EJECTIONS_TOTAL, "Outlier ejections, by cluster and reason (consecutive_5xx, consecutive_gateway_failures, failure_percentage)."),
    (
        FAULTS_INJECTED_TOTAL,
        "Chaos faults applied to upstream attempts, by kind (delay, abort, reset, refuse, blackhole, bandwidth).",
    ),
    (BREAKER_STATE, "Circuit breaker state by cluster and breaker: 0 closed, 1 half-open, 2 open (or forced open)."),
    (BREAKER_TRANSITIONS_TOTAL, "Circuit breaker state changes by cluster, from, to and reason."),
    (RETRIES_TOTAL, "Retry attempts sent (the first attempt excluded), by cluster and the outcome that caused them."),
    (RETRY_BUDGET_EXHAUSTED_TOTAL, "Retries refused because the retry budget was spent, by cluster."),
    (REJECTED_TOTAL, "Requests failed fast without reaching the backend, by cluster and reason (circuit_open, overloaded, queue_timeout)."),
    (MEMORY_RELEASES_TOTAL, "Times freed memory was given back to the system after the proxy's open connections fell by half or more."),
];

"""Prometheus metric names and labels: the contract between server, router, operator and dashboards.

Defined once here (docs/architecture.md §6) and imported everywhere a metric is exported or queried.
"""

from __future__ import annotations

from typing import Final

# --- exported by the model server -------------------------------------------------------------
REQUESTS_TOTAL: Final = "noria_requests_total"  # counter: model, version, endpoint, code
REQUEST_DURATION_SECONDS: Final = "noria_request_duration_seconds"  # histogram: model, version
PREDICTIONS_TOTAL: Final = "noria_predictions_total"  # counter: model, version, class
FEATURE_BIN_TOTAL: Final = "noria_feature_bin_total"  # counter: model, version, feature, bin
FEEDBACK_TOTAL: Final = "noria_feedback_total"  # counter: model, version, actual, predicted
FEEDBACK_ABS_ERROR_SUM: Final = "noria_feedback_abs_error_sum"  # counter: model, version (regression)
FEEDBACK_ABS_ERROR_COUNT: Final = "noria_feedback_abs_error_count"  # counter: model, version (regression)
PREDICTION_LOG_DROPPED_TOTAL: Final = "noria_prediction_log_dropped_total"  # counter: model, version, kind
FEEDBACK_REFUSED_TOTAL: Final = "noria_feedback_refused_total"  # counter: model, version, reason (items; requests for unauthorized)
# Where the serving thread's time goes (docs/operations/latency.md): histograms, model, version (+ stage, generation)
REQUEST_STAGE_SECONDS: Final = "noria_request_stage_seconds"  # histogram: model, version, stage (STAGE_*)
BATCH_ROWS: Final = "noria_batch_rows"  # histogram: model, version (rows per predict call)
EVENT_LOOP_LAG_SECONDS: Final = "noria_event_loop_lag_seconds"  # histogram: model, version
GC_PAUSE_SECONDS: Final = "noria_gc_pause_seconds"  # histogram: model, version, generation (0, 1, 2)
# Online features (docs/serving/online-features.md): the server's calls to Feast's feature server
ONLINE_LOOKUP_SECONDS: Final = "noria_online_feature_lookup_seconds"  # histogram: model, version (one call)
ONLINE_LOOKUPS_TOTAL: Final = "noria_online_feature_lookups_total"  # counter: model, version, outcome (LOOKUP_*)
ONLINE_MISSES_TOTAL: Final = "noria_online_feature_misses_total"  # counter: model, version, feature, status (MISS_*)
# Labelled production rows pushed back into Feast (spec.onlineFeatures.feast.feedbackPushSource)
FEEDBACK_SINK_ROWS_TOTAL: Final = "noria_feedback_sink_rows_total"  # counter: model, version, outcome (SINK_*)

# --- exported by the router -------------------------------------------------------------------
SHADOW_COMPARISONS_TOTAL: Final = "noria_shadow_comparisons_total"  # counter: model, stable, shadow, outcome
ROUTER_WEIGHT: Final = "noria_router_weight"  # gauge: model, version
ROUTER_ERRORS_TOTAL: Final = "noria_router_errors_total"  # counter: model, version, reason
ROUTER_FEEDBACK_TOTAL: Final = "noria_router_feedback_total"  # counter: model, outcome (items, merged over replicas)
SHADOW_DURATION_SECONDS: Final = "noria_shadow_duration_seconds"  # histogram: model, shadow

# --- exported by both, from their HTTP layer (docs/security/http.md) ----------------------------
HTTP_LIMIT_TOTAL: Final = "noria_http_limit_total"  # counter: limit (a client hit a limit; see LIMIT_* in httpserver)
HTTP_CONNECTIONS: Final = "noria_http_connections"  # gauge: open client connections (refused ones not counted)
ROUTER_REQUESTS_TOTAL: Final = "noria_router_requests_total"  # counter: code (every answer the router gave)

# --- label names ------------------------------------------------------------------------------
LABEL_MODEL: Final = "model"
LABEL_VERSION: Final = "version"
LABEL_CODE: Final = "code"
# noria_requests_total: infer | feedback | other. Not "endpoint": a PodMonitor or ServiceMonitor sets that target
# label (the scrape port), which renames the servers' own to exported_endpoint and leaves errorRate without data.
LABEL_ENDPOINT: Final = "handler"
LABEL_CLASS: Final = "class"
LABEL_FEATURE: Final = "feature"
LABEL_BIN: Final = "bin"
LABEL_ACTUAL: Final = "actual"
LABEL_PREDICTED: Final = "predicted"
LABEL_STABLE: Final = "stable"
LABEL_SHADOW: Final = "shadow"
LABEL_OUTCOME: Final = "outcome"
LABEL_REASON: Final = "reason"
LABEL_LIMIT: Final = "limit"  # noria_http_limit_total
LABEL_KIND: Final = "kind"  # noria_prediction_log_dropped_total: predictions | feedback
LABEL_STAGE: Final = "stage"  # noria_request_stage_seconds
LABEL_GENERATION: Final = "generation"  # noria_gc_pause_seconds
LABEL_STATUS: Final = "status"  # noria_online_feature_misses_total: the feature server's status for the value

# Special bins of noria_feature_bin_total besides the profile's own bin indices "0".."n-1"
# (numeric) or category names (categorical).
BIN_MISSING: Final = "missing"
BIN_BELOW: Final = "below"
BIN_ABOVE: Final = "above"
BIN_OTHER: Final = "other"

# Endpoints of noria_requests_total. errorRate reads only "infer": answers to anything else
# (metadata, unknown paths, feedback fanned out to every pod, requests the HTTP layer refused before
# they were complete) would pad its denominator, and any client could dilute a failing candidate's
# error rate with cheap requests pinned to it.
ENDPOINT_INFER: Final = "infer"
ENDPOINT_FEEDBACK: Final = "feedback"
ENDPOINT_OTHER: Final = "other"

# Outcomes of noria_shadow_comparisons_total.
OUTCOME_AGREE: Final = "agree"
OUTCOME_DISAGREE: Final = "disagree"
OUTCOME_ERROR: Final = "error"

# Reasons of noria_feedback_refused_total: the label did not move a counter because ...
FEEDBACK_DUPLICATE: Final = "duplicate"  # its id was labelled before (the first label counted)
FEEDBACK_UNKNOWN_ID: Final = "unknown_id"  # this pod holds no prediction with that id (not counted behind the router)
FEEDBACK_EXPIRED: Final = "expired"  # the prediction is older than the feedback retention
FEEDBACK_UNKNOWN_CLASS: Final = "unknown_class"  # classifier: not one of the fitted model's classes
FEEDBACK_NOT_FINITE: Final = "not_finite"  # NaN/Inf, or an absolute error that is not finite
FEEDBACK_OUT_OF_RANGE: Final = "out_of_range"  # regressor: larger in magnitude than --feedback-max-abs-label
FEEDBACK_NOT_A_NUMBER: Final = "not_a_number"  # regressor: a non-numeric label
FEEDBACK_UNAUTHORIZED: Final = "unauthorized"  # a token is configured and the request did not carry it (per request)

# Reasons of noria_router_errors_total (the router answers 502/503 for the first four).
ROUTER_ERROR_UNREACHABLE: Final = "unreachable"
ROUTER_ERROR_TIMEOUT: Final = "timeout"
ROUTER_ERROR_NO_ENDPOINTS: Final = "no_endpoints"
ROUTER_ERROR_UNKNOWN_VERSION: Final = "unknown_version"
ROUTER_ERROR_SHADOW_OVERLOAD: Final = "shadow_overload"  # mirroring skipped: too many shadow calls in flight

# Stages of noria_request_stage_seconds: per request (parse, batch_wait, serialise) or per micro-batch
# (predict, count, log).
STAGE_PARSE: Final = "parse"  # the body decoded and checked against the schema
STAGE_BATCH_WAIT: Final = "batch_wait"  # parsed -> its micro-batch starts
STAGE_PREDICT: Final = "predict"  # the model's predict(_proba) on the batch
STAGE_COUNT: Final = "count"  # drift bins and prediction counters for a settled group of answered batches
STAGE_LOG: Final = "log"  # a settled group handed to the prediction ledger and the prediction log
STAGE_SERIALISE: Final = "serialise"  # one answer encoded
STAGES: Final = (STAGE_PARSE, STAGE_BATCH_WAIT, STAGE_PREDICT, STAGE_COUNT, STAGE_LOG, STAGE_SERIALISE)

# Outcomes of noria_online_feature_lookups_total (one per call to the feature server; the answers to
# the requests it served: ok -> predicted or 404 on a miss, timeout -> 504, unavailable -> 503,
# bad_answer -> 502).
LOOKUP_OK: Final = "ok"  # the feature server answered 200 with a readable body
LOOKUP_TIMEOUT: Final = "timeout"  # no complete answer within spec.onlineFeatures.feast.timeout
LOOKUP_UNAVAILABLE: Final = "unavailable"  # refused, reset or unreachable, or a 5xx answer
LOOKUP_BAD_ANSWER: Final = "bad_answer"  # a 4xx answer (e.g. an unknown feature service), an unreadable body, a failed TLS handshake
LOOKUP_OUTCOMES: Final = (LOOKUP_OK, LOOKUP_TIMEOUT, LOOKUP_UNAVAILABLE, LOOKUP_BAD_ANSWER)

# Statuses of noria_online_feature_misses_total: a feature value the model needed and the store did
# not have (Feast's FieldStatus, lower case; anything else it may add is "other").
MISS_NOT_FOUND: Final = "not_found"  # no value for this entity key
MISS_OUTSIDE_MAX_AGE: Final = "outside_max_age"  # a value older than the feature view's ttl
MISS_INVALID: Final = "invalid"
MISS_OTHER: Final = "other"
MISS_STATUSES: Final = (MISS_NOT_FOUND, MISS_OUTSIDE_MAX_AGE, MISS_INVALID, MISS_OTHER)

# Outcomes of noria_feedback_sink_rows_total: one per labelled row the server had for Feast's push
# source (noria_server.feast_sink). Every row ends in exactly one of them, none silently.
SINK_PUSHED: Final = "pushed"  # Feast's feature server accepted the push (200/202)
SINK_DROPPED: Final = "dropped"  # the sink's buffer was full (Feast down or slow for long): never queued
SINK_REJECTED: Final = "rejected"  # Feast answered 4xx (unknown push source, columns not the source's): not retried
SINK_FAILED: Final = "failed"  # still timing out, refused or answered 5xx after every retry
SINK_LOST: Final = "lost"  # still in the buffer when the server stopped
SINK_OUTCOMES: Final = (SINK_PUSHED, SINK_DROPPED, SINK_REJECTED, SINK_FAILED, SINK_LOST)

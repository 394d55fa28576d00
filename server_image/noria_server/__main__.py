"""``python -m noria_server serve|route``: one image, two modes (docs/architecture.md §5).

Every flag has an environment variable of the same meaning (the operator's Deployments set the
variables; flags win when both are given).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING

from . import bearer, ledger

if TYPE_CHECKING:
    from .serve import ServeSettings


def _env_bool(name: str, default: bool) -> bool:
    value = os.environ.get(name)
    if value is None or value == "":
        return default
    if value.lower() in ("1", "true", "on", "yes"):
        return True
    if value.lower() in ("0", "false", "off", "no"):
        return False
    raise SystemExit(f"{name}={value!r}: expected on/off")


def _on_off(value: str) -> bool:
    if value.lower() in ("1", "true", "on", "yes"):
        return True
    if value.lower() in ("0", "false", "off", "no"):
        return False
    raise argparse.ArgumentTypeError(f"expected on/off, got {value!r}")


# (flag, HttpLimits field, environment variable, type, help): what one client may cost (docs/security/http.md)
HTTP_LIMIT_FLAGS = (
    ("--max-url-bytes", "max_url_bytes", "NORIA_MAX_URL_BYTES", int, "longest request target; longer: 414"),
    ("--max-header-bytes", "max_header_bytes", "NORIA_MAX_HEADER_BYTES", int,
     "header names + values in total; more: 431"),
    ("--max-headers", "max_headers", "NORIA_MAX_HEADERS", int, "most header fields; more: 431"),
    ("--max-body-bytes", "max_body_bytes", "NORIA_MAX_BODY_BYTES", int,
     "largest request body; larger: 413, decided from Content-Length before reading"),
    ("--header-timeout", "header_timeout", "NORIA_HEADER_TIMEOUT_SECONDS", float,
     "seconds from a request's first byte (or the connection) to the end of its headers; then 408 + close"),
    ("--body-timeout", "body_timeout", "NORIA_BODY_TIMEOUT_SECONDS", float,
     "seconds from the end of the headers to the end of the body; then 408 + close"),
    ("--idle-timeout", "idle_timeout", "NORIA_IDLE_TIMEOUT_SECONDS", float,
     "seconds a kept-alive connection may wait for its next request"),
    ("--max-connections", "max_connections", "NORIA_MAX_CONNECTIONS", int,
     "open client connections at most; more are answered 503 and closed"),
    ("--max-buffered-body-bytes", "max_buffered_body_bytes", "NORIA_MAX_BUFFERED_BODY_BYTES", int,
     "request bodies held by all connections together until answered; past it: 503"),
)


def _add_http_limits(p: argparse.ArgumentParser) -> None:
    from .httpserver import HttpLimits

    defaults = HttpLimits()
    for flag, name, var, kind, text in HTTP_LIMIT_FLAGS:
        raw = os.environ.get(var)
        try:
            default = kind(raw) if raw not in (None, "") else getattr(defaults, name)
        except ValueError:
            raise SystemExit(f"{var}={raw!r}: expected a number") from None
        p.add_argument(flag, dest=name, type=kind, default=default, help=f"{text} (default {default}) [{var}]")


def _http_limits(args: argparse.Namespace):  # type: ignore[no-untyped-def]
    from .httpserver import HttpLimits

    limits = HttpLimits(**{name: getattr(args, name) for _, name, _, _, _ in HTTP_LIMIT_FLAGS})
    try:
        limits.validate()
    except ValueError as exc:
        raise SystemExit(f"noria_server {args.mode}: {exc}") from None
    return limits


def _add_artifact_flags(p: argparse.ArgumentParser) -> None:
    """Where a refusal is reported, and the artifact caps (docs/security/artifacts.md)."""
    from noria.artifact import DEFAULT_LIMITS

    env = os.environ.get
    p.add_argument("--termination-log", default=env("NORIA_TERMINATION_LOG"),
                   help="file the refusal is written to as JSON {reason, kind, message}; default "
                        "/dev/termination-log when it exists and is writable [NORIA_TERMINATION_LOG]")
    for flag, var, name, text in (
            ("--max-artifact-bytes", "NORIA_MAX_ARTIFACT_BYTES", "max_file_bytes", "largest model.skops file"),
            ("--max-artifact-uncompressed-bytes", "NORIA_MAX_ARTIFACT_UNCOMPRESSED_BYTES", "max_total_bytes",
             "most bytes its zip members may inflate to in total")):
        raw = env(var)
        try:
            default = int(raw) if raw else getattr(DEFAULT_LIMITS, name)
        except ValueError:
            raise SystemExit(f"{var}={raw!r}: expected a number of bytes") from None
        p.add_argument(flag, dest=name, type=int, default=default, help=f"{text} (default {default}) [{var}]")


def _artifact_limits(args: argparse.Namespace):  # type: ignore[no-untyped-def]
    import dataclasses

    from noria.artifact import DEFAULT_LIMITS

    if args.max_file_bytes < 1 or args.max_total_bytes < 1:
        raise SystemExit("noria_server serve: the artifact caps must be positive")
    return dataclasses.replace(DEFAULT_LIMITS, max_file_bytes=args.max_file_bytes,
                               max_member_bytes=min(DEFAULT_LIMITS.max_member_bytes, args.max_total_bytes),
                               max_total_bytes=args.max_total_bytes)


def _add_online_feature_flags(p: argparse.ArgumentParser) -> None:
    """Online features from Feast's feature server (the Rollout's spec.onlineFeatures.feast;
    docs/serving/online-features.md). Off without --feast-url."""
    from .online import DEFAULT_TIMEOUT_SECONDS

    env = os.environ.get
    p.add_argument("--feast-url", default=env("NORIA_FEAST_URL") or None,
                   help="http(s)://host:port of `feast serve`: requests carry entity keys and the server looks the "
                        "features up there [NORIA_FEAST_URL]")
    p.add_argument("--feast-feature-service", default=env("NORIA_FEAST_FEATURE_SERVICE") or None,
                   help="the feature service to read [NORIA_FEAST_FEATURE_SERVICE]")
    p.add_argument("--feast-features", default=env("NORIA_FEAST_FEATURES", ""),
                   help="or: comma-separated <featureView>:<feature> references [NORIA_FEAST_FEATURES]")
    p.add_argument("--feast-entity-keys", default=env("NORIA_FEAST_ENTITY_KEYS", ""),
                   help="comma-separated entity key names: the inputs a request carries [NORIA_FEAST_ENTITY_KEYS]")
    raw = env("NORIA_FEAST_TIMEOUT_MS")
    try:
        default_ms = float(raw) if raw else DEFAULT_TIMEOUT_SECONDS * 1000
    except ValueError:
        raise SystemExit(f"NORIA_FEAST_TIMEOUT_MS={raw!r}: expected a number of milliseconds") from None
    p.add_argument("--feast-timeout-ms", type=float, default=default_ms,
                   help=f"bound of one lookup, connect included; then 504 (default {default_ms:g}) "
                        "[NORIA_FEAST_TIMEOUT_MS]")
    p.add_argument("--feast-on-missing", default=env("NORIA_FEAST_ON_MISSING", "reject"),
                   help="reject (404 naming the keys) or asMissing (missing values) when the store has no value "
                        "[NORIA_FEAST_ON_MISSING]")
    p.add_argument("--feast-feedback-push-source", default=env("NORIA_FEAST_FEEDBACK_PUSH_SOURCE") or None,
                   help="push each counted label's row (keys, features as served, prediction, label, times) to this "
                        "Feast push source through the feature server's /push [NORIA_FEAST_FEEDBACK_PUSH_SOURCE]")


def _feedback_sink(args: argparse.Namespace):  # type: ignore[no-untyped-def]
    from .feast_sink import SinkSettings

    return SinkSettings(push_source=args.feast_feedback_push_source) if args.feast_feedback_push_source else None


def _online_features(args: argparse.Namespace):  # type: ignore[no-untyped-def]
    from .online import OnlineFeatureSettings

    if not args.feast_url:
        return None
    split = lambda text: tuple(part.strip() for part in text.split(",") if part.strip())  # noqa: E731
    return OnlineFeatureSettings(url=args.feast_url, entity_keys=split(args.feast_entity_keys),
                                 feature_service=args.feast_feature_service, features=split(args.feast_features),
                                 timeout=args.feast_timeout_ms / 1000.0, on_missing=args.feast_on_missing)


def parser() -> argparse.ArgumentParser:
    # Imported here, not at the top: they load NumPy, which must come after _limit_native_threads.
    from .model import DEFAULT_BATCH_BUDGET_MS, DEFAULT_BATCH_HOLD_US
    from .predlog import DEFAULT_FLUSH_SECONDS

    env = os.environ.get
    p = argparse.ArgumentParser(prog="python -m noria_server", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="mode", required=True)

    s = sub.add_parser("serve", help="serve one verified ModelVersion over OIP v2")
    s.add_argument("--artifact", default=env("NORIA_ARTIFACT_URI"), help="model.skops URI [NORIA_ARTIFACT_URI]")
    s.add_argument("--digest", default=env("NORIA_DIGEST"), help="sha256:<hex> of the artifact [NORIA_DIGEST]")
    s.add_argument("--profile", default=env("NORIA_PROFILE_URI"), help="profile.json URI [NORIA_PROFILE_URI]")
    s.add_argument("--model", default=env("NORIA_MODEL"), help="OIP model name = pipeline name [NORIA_MODEL]")
    s.add_argument("--version", default=env("NORIA_VERSION"), help="ModelVersion name [NORIA_VERSION]")
    s.add_argument("--host", default=env("NORIA_HOST", "0.0.0.0"), help="bind address [NORIA_HOST]")
    s.add_argument("--port", type=int, default=int(env("NORIA_PORT", "8080")), help="[NORIA_PORT]")
    s.add_argument("--store-root", default=env("NORIA_STORE_ROOT"), help="[NORIA_STORE_ROOT]")
    s.add_argument("--namespace", default=env("NORIA_NAMESPACE"), help="[NORIA_NAMESPACE]")
    s.add_argument("--pipeline", default=env("NORIA_PIPELINE"), help="[NORIA_PIPELINE]")
    s.add_argument("--pod", default=env("POD_NAME") or env("HOSTNAME") or "local", help="[POD_NAME]")
    s.add_argument("--prediction-log", type=_on_off, default=_env_bool("NORIA_PREDICTION_LOG", True),
                   help="on/off [NORIA_PREDICTION_LOG]")
    s.add_argument("--feature-counting", type=_on_off, default=_env_bool("NORIA_FEATURE_COUNTING", True),
                   help="count inputs into the drift profile's bins, on/off [NORIA_FEATURE_COUNTING]")
    s.add_argument("--max-batch", type=int, default=int(env("NORIA_MAX_BATCH", "64")),
                   help="rows per predict call at most [NORIA_MAX_BATCH]")
    s.add_argument("--batch-wait-ms", type=float, default=float(env("NORIA_BATCH_WAIT_MS", "0")),
                   help="extra wait for a batch to fill; 0 = batch only what is already queued [NORIA_BATCH_WAIT_MS]")
    s.add_argument("--batch-budget-ms", type=float,
                   default=float(env("NORIA_BATCH_BUDGET_MS", str(DEFAULT_BATCH_BUDGET_MS))),
                   help="what batching may add to one predict call; the batch size adapts to it "
                        f"(default {DEFAULT_BATCH_BUDGET_MS}) [NORIA_BATCH_BUDGET_MS]")
    s.add_argument("--batch-hold-us", type=float,
                   default=float(env("NORIA_BATCH_HOLD_US", str(DEFAULT_BATCH_HOLD_US))),
                   help="longest hold of a small batch when the loop is near its maximum, 0..1000 µs, 0 = never "
                        f"(default {DEFAULT_BATCH_HOLD_US}) [NORIA_BATCH_HOLD_US]")
    s.add_argument("--log-flush-seconds", type=float,
                   default=float(env("NORIA_LOG_FLUSH_SECONDS", str(DEFAULT_FLUSH_SECONDS))),
                   help="one prediction-log object per this many seconds "
                        f"(default {DEFAULT_FLUSH_SECONDS}) [NORIA_LOG_FLUSH_SECONDS]")
    _add_http_limits(s)
    s.add_argument("--feedback-ledger-bytes", type=int,
                   default=int(env("NORIA_FEEDBACK_LEDGER_BYTES", str(ledger.DEFAULT_MAX_BYTES))),
                   help="memory for the ids of recent predictions, which feedback may label once each "
                        "[NORIA_FEEDBACK_LEDGER_BYTES]")
    s.add_argument("--feedback-retention-seconds", type=float,
                   default=float(env("NORIA_FEEDBACK_RETENTION_SECONDS", str(ledger.DEFAULT_RETENTION_SECONDS))),
                   help="a label counts only this long after its prediction [NORIA_FEEDBACK_RETENTION_SECONDS]")
    s.add_argument("--feedback-max-abs-label", type=float,
                   default=float(env("NORIA_FEEDBACK_MAX_ABS_LABEL", str(ledger.DEFAULT_MAX_ABS_LABEL))),
                   help="regression labels larger in magnitude are refused [NORIA_FEEDBACK_MAX_ABS_LABEL]")
    s.add_argument("--drain-seconds", type=float, default=float(env("NORIA_DRAIN_SECONDS", "5")),
                   help="keep serving this long after SIGTERM while not ready [NORIA_DRAIN_SECONDS]")
    s.add_argument("--failure-exit-seconds", type=float, default=float(env("NORIA_FAILURE_EXIT_SECONDS", "30")),
                   help="stay up (not ready) this long after refusing the artifact [NORIA_FAILURE_EXIT_SECONDS]")
    _add_artifact_flags(s)
    _add_online_feature_flags(s)

    r = sub.add_parser("route", help="split, pin and mirror traffic between model versions")
    src = r.add_mutually_exclusive_group()
    src.add_argument("--config", default=env("NORIA_ROUTER_CONFIG"),
                     help="router config JSON file, re-read when it changes [NORIA_ROUTER_CONFIG]")
    src.add_argument("--configmap", default=env("NORIA_ROUTER_CONFIGMAP"),
                     help="<namespace>/<name> of the ConfigMap holding config.json [NORIA_ROUTER_CONFIGMAP]")
    r.add_argument("--host", default=env("NORIA_HOST", "0.0.0.0"), help="[NORIA_HOST]")
    r.add_argument("--port", type=int, default=int(env("NORIA_PORT", "8080")), help="[NORIA_PORT]")
    r.add_argument("--timeout", type=float, default=float(env("NORIA_ROUTER_TIMEOUT_SECONDS", "10")),
                   help="whole backend request timeout, seconds [NORIA_ROUTER_TIMEOUT_SECONDS]")
    r.add_argument("--connect-timeout", type=float,
                   default=float(env("NORIA_ROUTER_CONNECT_TIMEOUT_SECONDS", "1")),
                   help="[NORIA_ROUTER_CONNECT_TIMEOUT_SECONDS]")
    r.add_argument("--drain-seconds", type=float, default=float(env("NORIA_DRAIN_SECONDS", "5")),
                   help="[NORIA_DRAIN_SECONDS]")
    from .route import MIRROR_ANSWERED, MIRROR_DELAY_SECONDS, MIRROR_SENT, MIRROR_WHEN

    r.add_argument("--mirror-when", choices=(MIRROR_SENT, MIRROR_ANSWERED), default=env("NORIA_ROUTER_MIRROR_WHEN")
                   or MIRROR_WHEN,
                   help=f"when a shadow's mirror leaves: {MIRROR_SENT}, right after the primary's request; "
                        f"{MIRROR_ANSWERED}, after the primary's answer is written (default {MIRROR_WHEN}) "
                        "[NORIA_ROUTER_MIRROR_WHEN]")
    r.add_argument("--mirror-delay", type=float,
                   default=float(env("NORIA_ROUTER_MIRROR_DELAY_SECONDS") or MIRROR_DELAY_SECONDS),
                   help=f"with --mirror-when {MIRROR_ANSWERED}: mirrors queued after their answers leave together "
                        "this many seconds after the first of them; 0: on the loop's next turn (default "
                        f"{MIRROR_DELAY_SECONDS:g}) [NORIA_ROUTER_MIRROR_DELAY_SECONDS]")
    _add_http_limits(r)
    return p


def _run(coro_factory) -> int:  # type: ignore[no-untyped-def]
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is in the server extra
        return asyncio.run(coro_factory())
    return uvloop.run(coro_factory())


def _limit_native_threads() -> None:
    """One native thread per process unless NORIA_THREADS says otherwise.

    Requests are batched on one event loop, so the model's OpenMP/BLAS threads only fight that loop
    and the pod's other replicas for the CPUs; measured here, a HistGradientBoosting one-row predict
    took 2.7 ms with one thread and 62 ms with the default two on a busy 2-core machine. Must run
    before NumPy is imported."""
    threads = os.environ.get("NORIA_THREADS", "1")
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(var, threads)


def serve_settings(args: argparse.Namespace, feedback_token: bearer.BearerToken | None) -> ServeSettings:
    """The ``serve`` mode's settings from its parsed flags (each defaulting to its variable)."""
    from .serve import ServeSettings, default_termination_log

    return ServeSettings(
        artifact_uri=args.artifact, digest=args.digest, profile_uri=args.profile, model=args.model,
        version=args.version, host=args.host, port=args.port, store_root=args.store_root,
        namespace=args.namespace, pipeline=args.pipeline, pod=args.pod, prediction_log=args.prediction_log,
        log_flush_seconds=args.log_flush_seconds, feature_counting=args.feature_counting,
        max_batch=args.max_batch, batch_wait_ms=args.batch_wait_ms, batch_budget_ms=args.batch_budget_ms,
        batch_hold_us=args.batch_hold_us, http=_http_limits(args), feedback_ledger_bytes=args.feedback_ledger_bytes,
        feedback_retention_seconds=args.feedback_retention_seconds,
        feedback_max_abs_label=args.feedback_max_abs_label, feedback_token=feedback_token,
        drain_seconds=args.drain_seconds, failure_exit_seconds=args.failure_exit_seconds,
        artifact_limits=_artifact_limits(args),
        termination_log=args.termination_log or default_termination_log(),
        online_features=_online_features(args), feedback_sink=_feedback_sink(args))


def main(argv: Sequence[str] | None = None) -> int:
    _limit_native_threads()
    logging.basicConfig(level=os.environ.get("NORIA_LOG_LEVEL", "INFO"),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    args = parser().parse_args(argv)
    try:  # from the environment only: a flag would show the token in the node's process list
        feedback_token = bearer.from_environment(os.environ.get(bearer.TOKEN_ENV))
    except ValueError as exc:
        print(f"noria_server {args.mode}: {exc}", file=sys.stderr)
        return 2
    if args.mode == "serve":
        from .serve import run

        settings = serve_settings(args, feedback_token)
        try:
            settings.validate()
        except ValueError as exc:
            print(f"noria_server serve: {exc}", file=sys.stderr)
            return 2
        return _run(lambda: run(settings))

    from .route import RouterSettings
    from .route import run as run_router

    if not args.config and not args.configmap:
        print("noria_server route: give --config <file> or --configmap <namespace>/<name>", file=sys.stderr)
        return 2
    try:
        router_settings = RouterSettings(config_file=args.config, configmap=args.configmap, host=args.host,
                                         port=args.port, timeout=args.timeout, connect_timeout=args.connect_timeout,
                                         drain_seconds=args.drain_seconds, http=_http_limits(args),
                                         mirror_when=args.mirror_when, mirror_delay=args.mirror_delay,
                                         feedback_token=feedback_token)
    except ValueError as exc:
        print(f"noria_server route: {exc}", file=sys.stderr)
        return 2
    return _run(lambda: run_router(router_settings))


if __name__ == "__main__":
    sys.exit(main())

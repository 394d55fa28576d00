"""Kopf settings and handler registration for the Noria operator, and the operator process's life.

Importing this module imports kopf; the shared modules (api, drift, artifact, store, metrics)
never import it, so the trainer and server images do not need it.

The process (:func:`run`): serve /healthz and /metrics at once, stand by until this replica holds
the leader Lease (``noria.leader``), then run Kopf while renewing it. Losing the Lease ends the
process at once with ``leader.LEASE_LOST_EXIT_CODE`` (the pod restarts as a standby); SIGTERM
stops Kopf gracefully and then releases the Lease so a standby takes over without waiting for it
to expire. A standby has not started Kopf, so it watches nothing and writes nothing but its tries
at the Lease.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
from collections.abc import Sequence
from typing import Any
from urllib.parse import urlsplit

import kopf

from noria.contracts import FINALIZER, GROUP


@kopf.on.startup()
def configure(settings: kopf.OperatorSettings, **_: Any) -> None:
    # Strict CRD schemas drop unknown status fields silently, so Kopf's progress and "last
    # handled" state go into annotations under our own prefix (Kopf wants the bare domain, noria.dev,
    # and adds the slash), never into status.
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=GROUP)
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix=GROUP, key="last-handled-configuration"
    )
    settings.persistence.finalizer = FINALIZER
    # WARNING and above become Kubernetes Events. Not INFO: Kopf logs "Handler succeeded" at INFO for
    # every watch event of on.event handlers (Jobs, ModelVersions), one Event object each. Noria's own
    # Events are posted explicitly (kube.post_event / kopf.event), whatever this level.
    settings.posting.level = 30
    settings.watching.server_timeout = int(os.environ.get("NORIA_WATCH_TIMEOUT", "300"))
    settings.watching.client_timeout = settings.watching.server_timeout + 30
    settings.networking.request_timeout = float(os.environ.get("NORIA_REQUEST_TIMEOUT", "30"))
    settings.networking.connect_timeout = 10.0
    # Kopf runs one worker task per object with pending events, without bound by default: at start-up
    # with thousands of objects that is thousands of concurrent first passes (memory peak, a burst of
    # requests the API server answers with 429). NORIA_WORKER_LIMIT bounds them; a worker idle for
    # NORIA_WORKER_IDLE_SECONDS ends and frees its slot (docs/operations/scale.md).
    if os.environ.get("NORIA_WORKER_LIMIT"):
        settings.batching.worker_limit = int(os.environ["NORIA_WORKER_LIMIT"])
    settings.batching.idle_timeout = float(os.environ.get("NORIA_WORKER_IDLE_SECONDS", "5"))


@kopf.on.startup()
async def start_notifications(**_: Any) -> None:
    """Webhooks follow Events from here on (noria.notify): Kopf runs only on the leader, so only it sends."""
    from noria import notify

    notify.start()


@kopf.on.cleanup()
async def stop_notifications(**_: Any) -> None:
    from noria import notify

    await notify.stop()


# Handler modules register themselves on import.
from noria.deployment import handlers as _deployment_handlers  # noqa: E402,F401
from noria.training import handlers as _training_handlers  # noqa: E402,F401

# --- the process -----------------------------------------------------------------------------------
log = logging.getLogger(__name__)


async def serve_liveness(url: str) -> Any:
    """/healthz from the first moment, standby or leader: a standby is alive. (Kopf's own endpoint
    starts with Kopf, i.e. only on the leader.) Answers from the event loop, so a blocked loop fails it."""
    from aiohttp import web

    from noria import leader

    where = urlsplit(url)

    async def healthz(_: web.Request) -> web.Response:
        return web.json_response({"leading": leader.is_leading()})

    app = web.Application()
    app.router.add_get(where.path or "/healthz", healthz)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, where.hostname or "0.0.0.0", where.port or 8080).start()
    return runner


async def _operate(namespaces: Sequence[str], liveness: str, elect: bool) -> int:
    from noria import leader, opmetrics
    from noria.settings import Settings

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):  # Kopf installs its own once it runs
        loop.add_signal_handler(sig, stop.set)
    opmetrics.serve(Settings.from_env().metrics_port)
    opmetrics.LEADER.set(0 if elect else 1)
    health = await serve_liveness(liveness)
    operator = dict(clusterwide=not namespaces, namespaces=list(namespaces), liveness_endpoint=None,
                    standalone=True, stop_flag=stop)  # standalone: the Lease, not Kopf peering, says who acts
    try:
        if not elect:
            await kopf.operator(**operator)
            return 0
        config = leader.LeaseConfig.from_env(os.environ, namespaces)
        elector = leader.LeaderElector(config, leader.KubeLeaseStore(config))
        leader.start_election()
        log.info("leader election on Lease %s/%s as %s: standing by until it is ours", config.namespace,
                 config.name, config.identity)
        acquiring, stopping = asyncio.create_task(elector.acquire()), asyncio.create_task(stop.wait())
        await asyncio.wait({acquiring, stopping}, return_when=asyncio.FIRST_COMPLETED)
        if not acquiring.done():  # SIGTERM while standing by: nothing to hand over
            acquiring.cancel()
            return 0
        stopping.cancel()
        holding = asyncio.create_task(elector.hold(), name="leader lease renewal")
        operating = asyncio.create_task(kopf.operator(**operator), name="kopf operator")
        await asyncio.wait({holding, operating}, return_when=asyncio.FIRST_COMPLETED)
        if holding.done():
            failure = holding.exception()
            leader.step_down_now(f"renewal crashed: {failure!r}" if failure else holding.result())  # no return
        holding.cancel()  # and wait until it is cancelled: release() must not race a renewal
        await asyncio.gather(holding, return_exceptions=True)
        await elector.release()
        operating.result()  # a crashed operator exits non-zero
        return 0
    finally:
        await health.cleanup()


def run(namespaces: Sequence[str], liveness: str, elect: bool) -> int:
    """Run the operator process; its exit code."""
    from noria import leader

    with asyncio.Runner(loop_factory=leader.fenced_event_loop if elect else None) as runner:
        return runner.run(_operate(namespaces, liveness, elect))

"""Crash points for tests only: ``hit(name)`` kills the process on the spot when asked to.

The Rollout pass calls ``hit("<name>")`` right after each of its side effects (see ``NAMES``) -- only
when that step changed something, so an operator started with a point armed runs quietly until the
pass that really does that step (a test arms one, then annotates abort or promote). When
the environment variable ``NORIA_FAILPOINT`` equals that name, the process exits at once with
``os._exit(137)`` -- the exit code of a SIGKILL, with no cleanup, no finally blocks and no flushed
buffers, exactly as if the node had died there. The crash-point integration test starts an operator
with each name in turn, lets it die, restarts it without the variable and checks that the Rollout and
its ModelVersions end up agreeing. Never set it in production.

Cost when unset: one dict lookup per call (the variable is read once, at import).
"""

from __future__ import annotations

import os
import sys
from typing import Final

ENV: Final = "NORIA_FAILPOINT"
EXIT_CODE: Final = 137  # 128 + SIGKILL, what a killed container reports

# Every crash point of a Rollout pass, in the order a pass reaches them.
CONSUMED_FIRST: Final = "rollout-after-consume-first"  # noria.dev/promote removed
PROVIDER_ENSURED: Final = "rollout-after-provider-ensure"
REPLICAS_APPLIED: Final = "rollout-after-replicas"  # per-version Deployments and Services
TRAFFIC_SET: Final = "rollout-after-traffic"
SCALE_DOWN_STAMPED: Final = "rollout-after-scale-down-stamps"
DELETED: Final = "rollout-after-deletes"
STATUS_WRITTEN: Final = "rollout-after-status"
STAGE_WRITTEN: Final = "rollout-after-stage"  # after each ModelVersion stage write
EVENTS_POSTED: Final = "rollout-after-events"
CONSUMED_LAST: Final = "rollout-after-consume-last"  # noria.dev/abort / retry removed
FINALIZED: Final = "rollout-after-finalize"  # deletion: route restored and stages recorded, finalizer kept
NAMES: Final = (CONSUMED_FIRST, PROVIDER_ENSURED, REPLICAS_APPLIED, TRAFFIC_SET, SCALE_DOWN_STAMPED, DELETED,
                STATUS_WRITTEN, STAGE_WRITTEN, EVENTS_POSTED, CONSUMED_LAST, FINALIZED)

_armed: str | None = os.environ.get(ENV) or None


def hit(name: str) -> None:
    """Exit the process now if ``NORIA_FAILPOINT`` names this point; otherwise do nothing."""
    if _armed is not None and _armed == name:
        sys.stderr.write(f"noria failpoint {name}: exiting with {EXIT_CODE}\n")
        sys.stderr.flush()
        os._exit(EXIT_CODE)


def arm(name: str | None) -> None:
    """Set (or clear) the armed point in this process: for unit tests that run in-process."""
    global _armed
    _armed = name

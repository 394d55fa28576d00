"""Leader election on a ``coordination.k8s.io/v1`` Lease: of several operator replicas, one acts.

Two replicas that both reconcile rewrite the same router ConfigMap in turn and post every Event
twice; an abort can even end as Healthy. Kopf's peering only pauses lower-priority operators when
it sees a higher one and is no lock, so the chart's replicas elect a leader here instead: a
process stands by (alive, serving /healthz and /metrics, taking no action) until it holds the
Lease, then starts Kopf, renews the Lease, and stops acting at once when it cannot.

How two candidates never both win: every write of the Lease is a create (refused if it exists)
or a replace carrying the ``resourceVersion`` it was decided from (refused with 409 Conflict if
anyone wrote it since). Of two standbys that see the same expired record, one replace lands.

Timings (environment; the defaults are client-go's):

=================================== ======= ==================================================
NORIA_LEASE_DURATION_SECONDS          15 s  a standby takes over when the record has not changed
                                            for this long (written into the Lease)
NORIA_LEASE_RENEW_DEADLINE_SECONDS    10 s  the leader stops acting when its last successful
                                            renewal started this long ago; less than the
                                            duration, so it stops before anyone may take over
NORIA_LEASE_RENEW_PERIOD_SECONDS       5 s  how often the leader renews
NORIA_LEASE_RETRY_PERIOD_SECONDS       2 s  how often a standby looks, and a failed renewal retries
=================================== ======= ==================================================

The Lease is ``NORIA_LEADER_LEASE_NAME`` (default ``noria-operator``) in
``NORIA_LEADER_NAMESPACE``, else ``POD_NAMESPACE``, else the one namespace the operator watches,
else ``noria-system``. The identity is ``POD_NAME`` (a restarted container keeps it and resumes
its own lease at once: the process that held it is gone), else ``<hostname>-<pid>``.

Clocks. Expiry is measured on this process's monotonic clock from the moment it saw the record
change (a new ``resourceVersion``), never from the Lease's ``renewTime``, which another machine's
wall clock wrote: skew between nodes cannot make a standby take over early. The leader measures
its own deadline from the *start* of its last successful renewal, so a slow answer shortens its
term rather than lengthening it.

Fencing, and what it does not cover. The Lease alone leaves two gaps: a leader frozen (SIGSTOP,
a VM pause, a long GC) that wakes after losing its lease still has watch events queued and
handlers mid-flight; and a write sent just before the deadline may land after a successor
started. The first is closed here: the event loop runs on :class:`FencedSelector`, which checks
the deadline every time the loop wakes, before any callback runs, and ends the process
(``os._exit(LEASE_LOST_EXIT_CODE)``) once it has passed; so a woken leader runs nothing. The
second is closed by the writes themselves: every status write carries the ``resourceVersion`` it
was decided from, so a deposed leader's late write gets 409 instead of landing. Blocking work
inside one callback (a long synchronous computation) is not interrupted: the margin between
renew deadline and lease duration (5 s by default) covers it.

For a reconcile pass that is about to write (not needed for correctness, it only saves doomed
work)::

    from noria import leader

    if not leader.is_leading(margin=2.0):  # less than 2 s of lease left: do not start writing
        raise kopf.TemporaryError("leader lease about to lapse", delay=1)

``is_leading()`` is True in a process that runs without election (``--no-leader-election``, unit
tests); ``seconds_left()`` says how long the current term lasts (``math.inf`` without election).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import enum
import logging
import math
import os
import selectors
import socket
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final, Protocol

log = logging.getLogger(__name__)

DEFAULT_LEASE_NAME: Final = "noria-operator"
DEFAULT_NAMESPACE: Final = "noria-system"
# EX_TEMPFAIL: the pod should restart (as a standby), nothing is wrong with its configuration.
LEASE_LOST_EXIT_CODE: Final = 75

ELECTION_ENV: Final = "NORIA_LEADER_ELECTION"
LEASE_NAME_ENV: Final = "NORIA_LEADER_LEASE_NAME"
LEASE_NAMESPACE_ENV: Final = "NORIA_LEADER_NAMESPACE"
DURATION_ENV: Final = "NORIA_LEASE_DURATION_SECONDS"
RENEW_DEADLINE_ENV: Final = "NORIA_LEASE_RENEW_DEADLINE_SECONDS"
RENEW_PERIOD_ENV: Final = "NORIA_LEASE_RENEW_PERIOD_SECONDS"
RETRY_PERIOD_ENV: Final = "NORIA_LEASE_RETRY_PERIOD_SECONDS"


# --- configuration --------------------------------------------------------------------------------
@dataclass(frozen=True)
class LeaseConfig:
    name: str = DEFAULT_LEASE_NAME
    namespace: str = DEFAULT_NAMESPACE
    identity: str = ""
    duration: int = 15  # whole seconds: leaseDurationSeconds is an integer
    renew_deadline: float = 10.0
    renew_period: float = 5.0
    retry_period: float = 2.0

    def __post_init__(self) -> None:
        if not self.identity:
            raise ValueError("leader election needs an identity: set POD_NAME")
        if self.duration < 1:
            raise ValueError(f"{DURATION_ENV} must be at least 1 (got {self.duration})")
        if not 0 < self.renew_deadline < self.duration:
            raise ValueError(f"{RENEW_DEADLINE_ENV} ({self.renew_deadline}) must be above 0 and below "
                             f"{DURATION_ENV} ({self.duration}): the leader has to stop before anyone may take over")
        if not 0 < self.renew_period < self.renew_deadline:
            raise ValueError(f"{RENEW_PERIOD_ENV} ({self.renew_period}) must be above 0 and below "
                             f"{RENEW_DEADLINE_ENV} ({self.renew_deadline}), or the leader never renews in time")
        if self.retry_period <= 0:
            raise ValueError(f"{RETRY_PERIOD_ENV} must be above 0 (got {self.retry_period})")

    @property
    def request_timeout(self) -> float:
        """Per Lease request: a hung renewal must leave time for another try before the deadline."""
        return max(1.0, (self.renew_deadline - self.renew_period) / 2)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, watched_namespaces: Sequence[str] = ()) -> LeaseConfig:
        e = os.environ if env is None else env
        default_ns = watched_namespaces[0] if len(watched_namespaces) == 1 else DEFAULT_NAMESPACE
        d = cls(identity="-")

        def number(key: str, default: float, kind: type = float) -> Any:
            raw = e.get(key, "").strip()
            if not raw:
                return default
            try:
                return kind(raw)
            except ValueError:
                raise ValueError(f"{key}={raw!r} is not a number of seconds"
                                 + (" (whole seconds)" if kind is int else "")) from None

        return cls(
            name=e.get(LEASE_NAME_ENV) or DEFAULT_LEASE_NAME,
            namespace=e.get(LEASE_NAMESPACE_ENV) or e.get("POD_NAMESPACE") or default_ns,
            identity=e.get("POD_NAME") or f"{socket.gethostname()}-{os.getpid()}",
            duration=number(DURATION_ENV, d.duration, int),
            renew_deadline=number(RENEW_DEADLINE_ENV, d.renew_deadline),
            renew_period=number(RENEW_PERIOD_ENV, d.renew_period),
            retry_period=number(RETRY_PERIOD_ENV, d.retry_period),
        )


def election_enabled(env: Mapping[str, str] | None = None) -> bool:
    value = (os.environ if env is None else env).get(ELECTION_ENV, "true").strip().lower()
    if value not in ("true", "false", "1", "0", "yes", "no"):
        raise ValueError(f"{ELECTION_ENV}={value!r}: say true or false")
    return value in ("true", "1", "yes")


# --- the pure decision -----------------------------------------------------------------------------
@dataclass(frozen=True)
class LeaseRecord:
    """What the Lease says, as far as the election cares. ``holder`` is "" when released."""

    holder: str
    duration: int
    resource_version: str
    transitions: int = 0
    acquire_time: str | None = None


class Action(enum.Enum):
    CREATE = "create"  # no Lease yet: create it holding it
    TAKE_OVER = "take over"  # released, or unchanged for its whole duration: replace it holding it
    RENEW = "renew"  # ours: replace it with a new renewTime
    WAIT = "wait"  # look again after Decision.wait seconds
    STEP_DOWN = "step down"  # we led and may not any more: stop acting now


@dataclass(frozen=True)
class Decision:
    action: Action
    wait: float = 0.0
    why: str = ""


def decide(record: LeaseRecord | None, *, me: str, now: float, observed_at: float, renewed_at: float | None,
           config: LeaseConfig) -> Decision:
    """What to do with the Lease.

    ``now`` and ``observed_at`` (when this process first saw ``record``'s resourceVersion) are
    readings of one monotonic clock; ``renewed_at`` is the start of our last successful write of
    the Lease while leading, None while standing by.

    Examples (duration 15, renew deadline 10, renew period 5, retry 2):

    * no Lease                                            -> CREATE
    * held by "b", seen 3 s ago, we stand by              -> WAIT 2 (look again)
    * held by "b", seen 15 s ago                          -> TAKE_OVER (b stopped renewing)
    * holder "" (released)                                -> TAKE_OVER at once
    * ours, renewed 5 s ago                               -> RENEW
    * ours, renewed 2 s ago                               -> WAIT 3
    * ours, renewed 10 s ago (renewals failed)            -> STEP_DOWN
    * held by "b" while we lead (b took it)               -> STEP_DOWN
    * ours but we are not leading (same pod, restarted)   -> RENEW (the old process is gone)
    """
    if renewed_at is not None:
        since_renewal = now - renewed_at
        if since_renewal >= config.renew_deadline:
            return Decision(Action.STEP_DOWN, why=f"not renewed for {since_renewal:.1f}s "
                                                  f"(deadline {config.renew_deadline:g}s)")
        if record is None:
            return Decision(Action.STEP_DOWN, why="the Lease was deleted")
        if record.holder != me:
            return Decision(Action.STEP_DOWN, why=f"the Lease is held by {record.holder or 'nobody'}")
        if since_renewal >= config.renew_period:
            return Decision(Action.RENEW)
        return Decision(Action.WAIT, wait=config.renew_period - since_renewal)
    if record is None:
        return Decision(Action.CREATE)
    if record.holder == me:
        return Decision(Action.RENEW, why="held under our own identity by a process that is gone")
    if not record.holder:
        return Decision(Action.TAKE_OVER, why="the Lease was released")
    # A clock read before the observation (it should not happen with a monotonic clock) counts as 0.
    unchanged_for = max(0.0, now - observed_at)
    duration = record.duration if record.duration > 0 else config.duration
    if unchanged_for >= duration:
        return Decision(Action.TAKE_OVER, why=f"{record.holder} has not renewed for {unchanged_for:.1f}s")
    return Decision(Action.WAIT, wait=min(config.retry_period, duration - unchanged_for),
                    why=f"held by {record.holder}")


# --- this process's term ---------------------------------------------------------------------------
class _Term:
    """The process-wide leadership state that is_leading() and the fenced event loop read."""

    enabled = False  # election in use in this process
    deadline: float | None = None  # monotonic time by which the leader must have renewed
    clock: Callable[[], float] = time.monotonic


def is_leading(margin: float = 0.0) -> bool:
    """True if this process may act for at least ``margin`` more seconds (always, without election)."""
    if not _Term.enabled:
        return True
    return _Term.deadline is not None and _Term.clock() + margin < _Term.deadline


def seconds_left() -> float:
    """How long this process may still act: ``math.inf`` without election, 0 while standing by."""
    if not _Term.enabled:
        return math.inf
    if _Term.deadline is None:
        return 0.0
    return max(0.0, _Term.deadline - _Term.clock())


def _set_term(deadline: float | None) -> None:
    _Term.deadline = deadline
    from noria import opmetrics  # the gauge; imported late so this module stays importable alone

    opmetrics.LEADER.set(1 if deadline is not None else 0)


def step_down_now(why: str) -> None:
    """Stop acting at once: end the process before any other callback of the event loop runs.

    No clean shutdown (Kopf's would let handlers finish, i.e. write): the pod restarts as a
    standby, and every step of a reconcile pass is idempotent, so an interrupted pass is redone
    by the next leader.
    """
    log.critical("noria: leader lease lost (%s); stopping at once, exit %d", why, LEASE_LOST_EXIT_CODE)
    for handler in logging.getLogger().handlers:
        try:
            handler.flush()
        except Exception:  # noqa: BLE001 - nothing may delay the exit
            pass
    try:
        sys.stderr.flush()
        sys.stdout.flush()
    finally:
        os._exit(LEASE_LOST_EXIT_CODE)


def enforce_term() -> None:
    """Step down if the leader's deadline has passed (called on every wake-up of the event loop)."""
    deadline = _Term.deadline
    if _Term.enabled and deadline is not None and _Term.clock() >= deadline:
        step_down_now(f"renew deadline passed {_Term.clock() - deadline:.1f}s ago, e.g. the process was frozen")


class FencedSelector(selectors.DefaultSelector):  # type: ignore[misc,valid-type]
    """The event loop's selector, with the leader's deadline checked after every wait.

    asyncio runs callbacks only after ``select()`` returns, so this is the one point every
    wake-up passes: after a freeze, the queued watch events and overdue timers never run. The
    wait is also cut short at the deadline, so an idle leader notices too.
    """

    def select(self, timeout: float | None = None) -> Any:
        deadline = _Term.deadline
        if _Term.enabled and deadline is not None:
            left = max(0.0, deadline - _Term.clock())
            timeout = left if timeout is None or timeout < 0 else min(timeout, left)
        events = super().select(timeout)
        enforce_term()
        return events


def fenced_event_loop() -> asyncio.AbstractEventLoop:
    """``asyncio.Runner(loop_factory=...)``: the operator's event loop on a FencedSelector."""
    return asyncio.SelectorEventLoop(FencedSelector())


# --- the I/O: one Lease through the API server -------------------------------------------------------
class LeaseConflict(Exception):
    """The Lease was created or written by someone else since we read it (HTTP 409)."""


class LeaseStore(Protocol):
    async def get(self) -> LeaseRecord | None: ...

    async def create(self, holder: str, duration: int, now: dt.datetime) -> LeaseRecord: ...

    async def update(self, base: LeaseRecord, holder: str, duration: int, now: dt.datetime,
                     acquired: bool) -> LeaseRecord: ...


def micro_time(at: dt.datetime) -> dt.datetime:
    """A MicroTime the API server parses: it wants six fraction digits, and a datetime with
    microsecond 0 is serialized without a fraction, so a whole second is written 1 µs later."""
    at = at.astimezone(dt.UTC)
    return at if at.microsecond else at.replace(microsecond=1)


class KubeLeaseStore:
    """The Lease through the API server (its own lightkube client: a renewal never queues behind
    the operator's own requests)."""

    def __init__(self, config: LeaseConfig, client: Any = None) -> None:
        self.config = config
        self._client = client

    def client(self) -> Any:
        if self._client is None:
            from lightkube import AsyncClient

            self._client = AsyncClient(field_manager="noria-leader-election", timeout=self.config.request_timeout)
        return self._client

    @staticmethod
    def _record(lease: Any) -> LeaseRecord:
        spec = lease.spec
        acquired = spec.acquireTime.isoformat() if spec and spec.acquireTime else None
        return LeaseRecord(holder=(spec.holderIdentity if spec else None) or "",
                           duration=(spec.leaseDurationSeconds if spec else None) or 0,
                           resource_version=lease.metadata.resourceVersion or "",
                           transitions=(spec.leaseTransitions if spec else None) or 0, acquire_time=acquired)

    async def get(self) -> LeaseRecord | None:
        from lightkube.resources.coordination_v1 import Lease

        from noria.kube import HTTPError, is_status

        try:
            lease = await self.client().get(Lease, self.config.name, namespace=self.config.namespace)
        except HTTPError as exc:
            if is_status(exc, 404):
                return None
            raise
        return self._record(lease)

    async def create(self, holder: str, duration: int, now: dt.datetime) -> LeaseRecord:
        from lightkube.models.coordination_v1 import LeaseSpec
        from lightkube.models.meta_v1 import ObjectMeta
        from lightkube.resources.coordination_v1 import Lease

        from noria.kube import HTTPError, is_status

        at = micro_time(now)
        lease = Lease(metadata=ObjectMeta(name=self.config.name, namespace=self.config.namespace,
                                          labels={"app.kubernetes.io/name": "noria"}),
                      spec=LeaseSpec(holderIdentity=holder, leaseDurationSeconds=duration, acquireTime=at,
                                     renewTime=at, leaseTransitions=0))
        try:
            return self._record(await self.client().create(lease))
        except HTTPError as exc:
            if is_status(exc, 409):
                raise LeaseConflict("created by someone else first") from None
            if is_status(exc, 404):
                raise RuntimeError(f"namespace {self.config.namespace} does not exist: create it, or set "
                                   f"{LEASE_NAMESPACE_ENV} to the namespace the Lease should live in") from None
            raise

    async def update(self, base: LeaseRecord, holder: str, duration: int, now: dt.datetime,
                     acquired: bool) -> LeaseRecord:
        """Replace the Lease with ``resourceVersion`` = ``base``'s (the precondition that makes
        of two concurrent takers one a loser)."""
        from lightkube.models.coordination_v1 import LeaseSpec
        from lightkube.models.meta_v1 import ObjectMeta
        from lightkube.resources.coordination_v1 import Lease

        from noria.api.common import parse_timestamp
        from noria.kube import HTTPError, is_status

        at = micro_time(now)
        new_holder = holder != base.holder
        # Kept across renewals: the time the holder took it, read as every timestamp is (a MicroTime;
        # no offset is UTC, never this machine's local time).
        acquire_time = at if acquired or base.acquire_time is None else parse_timestamp(base.acquire_time)
        lease = Lease(metadata=ObjectMeta(name=self.config.name, namespace=self.config.namespace,
                                          resourceVersion=base.resource_version,
                                          labels={"app.kubernetes.io/name": "noria"}),
                      spec=LeaseSpec(holderIdentity=holder or None, leaseDurationSeconds=duration,
                                     acquireTime=micro_time(acquire_time), renewTime=at,
                                     leaseTransitions=base.transitions + (1 if new_holder and holder else 0)))
        try:
            return self._record(await self.client().replace(lease))
        except HTTPError as exc:
            if is_status(exc, 409) or is_status(exc, 404):
                raise LeaseConflict("written or deleted by someone else since it was read") from None
            raise


class LeaderElector:
    """Runs :func:`decide` against a :class:`LeaseStore` until leading, then keeps the lease."""

    def __init__(self, config: LeaseConfig, store: LeaseStore, clock: Callable[[], float] = time.monotonic,
                 wall: Callable[[], dt.datetime] = lambda: dt.datetime.now(dt.UTC)) -> None:
        self.config, self.store, self.clock, self.wall = config, store, clock, wall
        self.record: LeaseRecord | None = None
        self.observed_at = 0.0
        self.renewed_at: float | None = None  # start of our last successful write, while leading
        self._fresh = False  # self.record is what our own last write returned

    @property
    def where(self) -> str:
        return f"Lease {self.config.namespace}/{self.config.name}"

    def _observe(self, record: LeaseRecord | None, at: float) -> None:
        if record is None or self.record is None or record.resource_version != self.record.resource_version:
            self.observed_at = at
        self.record = record

    async def step(self) -> Decision:
        """One look at the Lease and the action it calls for; returns the decision taken."""
        now = self.clock()
        if not self._fresh:  # while leading, our own last write is what the Lease says (409 if not)
            self._observe(await self.store.get(), now)
        decision = decide(self.record, me=self.config.identity, now=now, observed_at=self.observed_at,
                          renewed_at=self.renewed_at, config=self.config)
        if decision.action not in (Action.CREATE, Action.TAKE_OVER, Action.RENEW):
            return decision
        started = self.clock()
        try:
            if decision.action is Action.CREATE:
                written = await self.store.create(self.config.identity, self.config.duration, self.wall())
            else:
                assert self.record is not None
                written = await self.store.update(self.record, self.config.identity, self.config.duration,
                                                  self.wall(), acquired=self.renewed_at is None)
        except LeaseConflict as exc:
            log.info("%s: %s; looking again", self.where, exc)
            self._fresh = False
            return Decision(Action.WAIT, wait=0.0, why=str(exc))
        was_leading = self.renewed_at is not None
        self._observe(written, started)
        self._fresh = True
        self.renewed_at = started
        _set_term(started + self.config.renew_deadline)
        if not was_leading:
            log.info("%s acquired by %s (%s)", self.where, self.config.identity, decision.why or decision.action.value)
        return decision

    async def acquire(self) -> None:
        """Return once this process holds the Lease (standing by until then)."""
        reported: str | None = None
        while self.renewed_at is None:
            try:
                decision = await self.step()
            except Exception as exc:  # noqa: BLE001 - an unreachable API server: keep standing by
                if str(exc) != reported:  # once per distinct failure, not every retry period
                    reported = str(exc)
                    log.warning("%s: %s; standing by", self.where, exc)
                await asyncio.sleep(self.config.retry_period)
                continue
            if self.renewed_at is None and decision.why and decision.why != reported:
                reported = decision.why
                log.info("%s %s: standing by as %s", self.where, decision.why, self.config.identity)
            await asyncio.sleep(decision.wait if self.renewed_at is None else 0)

    async def hold(self) -> str:
        """Renew until the lease is lost; return why (the caller stops acting at once)."""
        while True:
            attempt = self.clock()
            try:
                decision = await self.step()
            except Exception as exc:  # noqa: BLE001 - keep trying until the deadline
                log.warning("%s: renewal failed (%s); %.1fs of the term left", self.where, exc, seconds_left())
                self._fresh = False
                if self.renewed_at is not None and self.clock() - self.renewed_at >= self.config.renew_deadline:
                    return f"not renewed for {self.clock() - self.renewed_at:.1f}s: {exc}"
                await asyncio.sleep(max(0.0, self.config.retry_period - (self.clock() - attempt)))
                continue
            if decision.action is Action.STEP_DOWN:
                return decision.why
            await asyncio.sleep(decision.wait)

    async def release(self) -> None:
        """Give the Lease up (holder "", still ours to write) so a standby takes over at once."""
        if self.renewed_at is None or self.record is None:
            return
        base, self.renewed_at = self.record, None
        _set_term(None)
        try:
            await self.store.update(base, "", 1, self.wall(), acquired=False)
            log.info("%s released", self.where)
        except Exception as exc:  # noqa: BLE001 - a standby takes over when the lease expires instead
            log.warning("%s: could not release (%s); a standby takes over when it expires", self.where, exc)


def start_election() -> None:
    """Mark this process as one that acts only while leading (is_leading() is False until then)."""
    _Term.enabled = True
    _set_term(None)

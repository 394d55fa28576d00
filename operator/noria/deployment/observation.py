"""What one Rollout pass sees and what it asks for: the inputs and output of ``decide``.

The handler fills an ``Observation`` from the API server (and one analysis measurement when one is
due); ``decide`` returns a ``Plan`` the handler carries out. Both are plain frozen data so that the
decision is a pure function with table tests.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from noria.api.common import parse_timestamp
from noria.deployment.analysis import CheckResult, Outcome
from noria.deployment.objects import RolloutRef
from noria.deployment.spec import RolloutSpec


def parse_time(value: Any) -> dt.datetime | None:
    """A status timestamp (``noria.api.common.parse_timestamp``); None when unset or unreadable."""
    if not value:
        return None
    try:
        return parse_timestamp(str(value))
    except ValueError:
        return None


@dataclass(frozen=True)
class ArtifactRefusal:
    """A server of the version refused its artifact, in its own words (its termination message)."""

    kind: str  # which check, e.g. DigestMismatch, UntrustedType, TooLarge
    message: str
    exit_code: int | None = None
    pod: str = ""

    def describe(self) -> str:
        code = f", exit code {self.exit_code}" if self.exit_code is not None else ""
        where = f" (pod {self.pod}{code})" if self.pod else ""
        return f"the server refused the artifact: {self.kind}: {self.message}{where}"[:900]


@dataclass(frozen=True)
class VersionPods:
    """A per-version Deployment as observed."""

    version: str
    replicas: int
    ready: int
    up_to_date: bool = True  # the Deployment controller has seen the latest spec
    scale_down_at: dt.datetime | None = None
    refusal: ArtifactRefusal | None = None  # a pod of this version refused its artifact

    def ready_for(self, want: int) -> bool:
        return self.up_to_date and self.replicas == want and self.ready >= want


@dataclass(frozen=True)
class Measurement:
    outcome: Outcome
    results: tuple[CheckResult, ...]
    at: dt.datetime


@dataclass(frozen=True)
class Observation:
    rollout: RolloutRef
    generation: int
    spec: RolloutSpec | None
    spec_error: str | None
    status: Mapping[str, Any]
    model_versions: Mapping[str, Mapping[str, Any]]  # every ModelVersion of the namespace, by name
    pods: Mapping[str, VersionPods]  # by version
    now: dt.datetime
    # Whether the provider's entry point can carry traffic (provider router: a router pod is ready, which
    # it is only once it has its config). Ready waits for it, so Healthy means users get answers.
    entry_ready: bool = True
    promote: bool = False  # noria.dev/promote=true: go past the current gate once
    promote_full: bool = False  # noria.dev/promote=full: skip every remaining step, promote now
    abort: bool = False
    retry: bool = False
    measurement: Measurement | None = None
    # ModelVersions whose artifact or profile URI is out of scope: name -> message naming the field.
    out_of_scope: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class StageChange:
    version: str
    stage: str
    reason: str
    traffic: int


@dataclass(frozen=True)
class Plan:
    replicas: dict[str, int] = field(default_factory=dict)  # versions to run, and how many pods each
    weights: dict[str, int] | None = None  # None: leave traffic as it is
    mirror: tuple[str, int] | None = None  # (version, percent)
    preview: str | None = None  # version behind the preview Service
    scale_down: dict[str, dt.datetime] = field(default_factory=dict)  # deadlines to stamp on Deployments
    delete: tuple[str, ...] = ()  # versions whose Deployment and Service go now
    stage_changes: tuple[StageChange, ...] = ()
    status: dict[str, Any] = field(default_factory=dict)
    events: tuple[tuple[str, str, str], ...] = ()  # (type Normal|Warning, reason, message)
    consume_first: tuple[str, ...] = ()  # annotations removed before acting (a lost promote is safe)
    consume_last: tuple[str, ...] = ()  # annotations removed after the status write (a repeated abort is a no-op)

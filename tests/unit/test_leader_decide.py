"""The pure leader-election decision: lease state + now + identity -> create / take over / renew /
wait / step down, with the clock edge cases; and the settings it runs on."""

from __future__ import annotations

import pytest
from noria.leader import Action, LeaseConfig, LeaseRecord, decide

CONFIG = LeaseConfig(identity="me", duration=15, renew_deadline=10, renew_period=5, retry_period=2)


def held_by(holder: str, duration: int = 15) -> LeaseRecord:
    return LeaseRecord(holder=holder, duration=duration, resource_version="7")


# (case, record, now, observed_at, renewed_at, expected action, expected wait)
ROWS = [
    ("no Lease yet: create it", None, 100.0, 100.0, None, Action.CREATE, 0.0),
    ("held by another, just seen: look again after the retry period", held_by("b"), 100.0, 100.0, None,
     Action.WAIT, 2.0),
    ("held by another, unchanged 14 s: wait the last second only", held_by("b"), 114.0, 100.0, None,
     Action.WAIT, 1.0),
    ("held by another, unchanged for its whole duration: take over", held_by("b"), 115.0, 100.0, None,
     Action.TAKE_OVER, 0.0),
    ("the holder's own shorter duration counts, not ours", held_by("b", duration=5), 105.0, 100.0, None,
     Action.TAKE_OVER, 0.0),
    ("a record without a duration falls back to ours", held_by("b", duration=0), 110.0, 100.0, None,
     Action.WAIT, 2.0),
    ("released (no holder): take over at once", held_by(""), 100.0, 100.0, None, Action.TAKE_OVER, 0.0),
    ("ours although we stand by (this pod restarted): resume it", held_by("me"), 100.0, 100.0, None,
     Action.RENEW, 0.0),
    ("leading, renewed 2 s ago: wait until the renew period", held_by("me"), 102.0, 100.0, 100.0,
     Action.WAIT, 3.0),
    ("leading, renewed 5 s ago: renew", held_by("me"), 105.0, 100.0, 100.0, Action.RENEW, 0.0),
    ("leading, renewals failing for 9.9 s: still renew", held_by("me"), 109.9, 100.0, 100.0, Action.RENEW, 0.0),
    ("leading, not renewed for the renew deadline: step down", held_by("me"), 110.0, 100.0, 100.0,
     Action.STEP_DOWN, 0.0),
    ("leading, frozen for a minute: step down, whatever the record says", held_by("me"), 160.0, 100.0, 100.0,
     Action.STEP_DOWN, 0.0),
    ("leading but another holds it: step down", held_by("b"), 101.0, 101.0, 100.0, Action.STEP_DOWN, 0.0),
    ("leading but released by someone: step down", held_by(""), 101.0, 101.0, 100.0, Action.STEP_DOWN, 0.0),
    ("leading but the Lease was deleted: step down (someone may create it)", None, 101.0, 101.0, 100.0,
     Action.STEP_DOWN, 0.0),
    ("clock read before the observation counts as no time passed", held_by("b"), 99.0, 100.0, None,
     Action.WAIT, 2.0),
]


@pytest.mark.parametrize(("record", "now", "observed_at", "renewed_at", "action", "wait"),
                         [row[1:] for row in ROWS], ids=[row[0] for row in ROWS])
def test_decision(record, now, observed_at, renewed_at, action, wait) -> None:  # noqa: ANN001
    decision = decide(record, me="me", now=now, observed_at=observed_at, renewed_at=renewed_at, config=CONFIG)
    assert decision.action is action, decision.why
    assert decision.wait == pytest.approx(wait)


def test_expiry_is_measured_from_when_we_saw_the_record_not_from_its_renew_time() -> None:
    """The Lease's renewTime is another machine's wall clock; a standby whose clock runs ahead (or
    that just started) must still wait a whole duration after it first saw the record."""
    record = LeaseRecord(holder="b", duration=15, resource_version="7", acquire_time="1999-01-01T00:00:00+00:00")
    first_look = decide(record, me="me", now=5000.0, observed_at=5000.0, renewed_at=None, config=CONFIG)
    assert first_look.action is Action.WAIT


def test_a_leader_always_steps_down_before_a_standby_may_take_over() -> None:
    """With one clock for both (the worst case: no margin from skew), the leader's last moment is
    earlier than the first moment a standby that saw its last renewal may take over."""
    renewed = 100.0
    last_acting = max(t / 10 for t in range(1000, 1300)
                      if decide(held_by("me"), me="me", now=t / 10, observed_at=renewed, renewed_at=renewed,
                                config=CONFIG).action is not Action.STEP_DOWN)
    first_takeover = min(t / 10 for t in range(1000, 1300)
                         if decide(held_by("me"), me="b", now=t / 10, observed_at=renewed, renewed_at=None,
                                   config=CONFIG).action is Action.TAKE_OVER)
    assert first_takeover - last_acting >= CONFIG.duration - CONFIG.renew_deadline


ENV_ROWS = [
    ("defaults, one watched namespace", {"POD_NAME": "p"}, ["ml"],
     LeaseConfig(name="noria-operator", namespace="ml", identity="p")),
    ("cluster-wide without a pod namespace", {"POD_NAME": "p"}, [],
     LeaseConfig(namespace="noria-system", identity="p")),
    ("several namespaces", {"POD_NAME": "p"}, ["a", "b"], LeaseConfig(namespace="noria-system", identity="p")),
    ("the pod's namespace wins over the watched one", {"POD_NAME": "p", "POD_NAMESPACE": "ops"}, ["ml"],
     LeaseConfig(namespace="ops", identity="p")),
    ("an explicit namespace and name win", {"POD_NAME": "p", "POD_NAMESPACE": "ops", "NORIA_LEADER_NAMESPACE": "x",
                                            "NORIA_LEADER_LEASE_NAME": "mine"}, ["ml"],
     LeaseConfig(name="mine", namespace="x", identity="p")),
    ("short timings for tests", {"POD_NAME": "p", "NORIA_LEASE_DURATION_SECONDS": "6",
                                 "NORIA_LEASE_RENEW_DEADLINE_SECONDS": "4", "NORIA_LEASE_RENEW_PERIOD_SECONDS": "1.5",
                                 "NORIA_LEASE_RETRY_PERIOD_SECONDS": "0.5"}, ["ml"],
     LeaseConfig(namespace="ml", identity="p", duration=6, renew_deadline=4, renew_period=1.5, retry_period=0.5)),
]


@pytest.mark.parametrize(("env", "watched", "expected"), [r[1:] for r in ENV_ROWS], ids=[r[0] for r in ENV_ROWS])
def test_config_from_env(env, watched, expected) -> None:  # noqa: ANN001
    assert LeaseConfig.from_env(env, watched) == expected


def test_identity_without_a_pod_name_is_host_and_pid() -> None:
    import os
    import socket

    assert LeaseConfig.from_env({}, ["ml"]).identity == f"{socket.gethostname()}-{os.getpid()}"


@pytest.mark.parametrize(("env", "named"), [
    ({"NORIA_LEASE_DURATION_SECONDS": "15s"}, "NORIA_LEASE_DURATION_SECONDS='15s' is not a number of seconds"),
    ({"NORIA_LEASE_DURATION_SECONDS": "7.5"}, "whole seconds"),
    ({"NORIA_LEASE_RENEW_DEADLINE_SECONDS": "15"}, "NORIA_LEASE_RENEW_DEADLINE_SECONDS (15.0) must be above 0 and below"),
    ({"NORIA_LEASE_RENEW_PERIOD_SECONDS": "10"}, "NORIA_LEASE_RENEW_PERIOD_SECONDS (10.0) must be above 0 and below"),
    ({"NORIA_LEASE_RETRY_PERIOD_SECONDS": "0"}, "NORIA_LEASE_RETRY_PERIOD_SECONDS must be above 0"),
], ids=["unit suffix", "fraction of a second", "deadline not below duration", "period not below deadline",
        "zero retry"])
def test_bad_timings_are_refused_naming_the_setting(env, named) -> None:  # noqa: ANN001
    with pytest.raises(ValueError, match=named.replace("(", r"\(").replace(")", r"\)")):
        LeaseConfig.from_env({"POD_NAME": "p", **env}, ["ml"])

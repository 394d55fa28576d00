"""The status write: only what changed, and a version leaving ``weights`` is deleted, not kept."""

from __future__ import annotations

from noria.deployment.handlers import status_patch


def test_a_version_leaving_the_weights_is_sent_as_null():
    old = {"weights": {"a": 40, "b": 60}, "phase": "Progressing"}
    new = {"weights": {"b": 100}, "phase": "Healthy"}
    assert status_patch(old, new) == {"weights": {"a": None, "b": 100}, "phase": "Healthy"}


def test_nothing_changed_means_no_write():
    st = {"weights": {"b": 100}, "analysis": {"passed": 1, "last": {"at": "x"}}}
    assert status_patch(st, dict(st)) == {}


def test_cleared_fields_become_null():
    assert status_patch({"canaryVersion": "v2", "analysis": {"last": {"at": "x"}, "passed": 1}},
                        {"canaryVersion": None, "analysis": {"passed": 0}}) == {
        "canaryVersion": None, "analysis": {"last": None, "passed": 0}}

"""One rule for a missing test dependency: skip on a developer's machine, fail under CI (CI=true)."""

from __future__ import annotations

import os

import pytest


def unavailable(reason: str) -> None:
    """Skip the test for ``reason``, or fail it when CI is set: CI never passes by skipping a check."""
    if os.environ.get("CI"):
        pytest.fail(f"{reason} (CI is set, so this fails instead of skipping)", pytrace=False)
    pytest.skip(reason)

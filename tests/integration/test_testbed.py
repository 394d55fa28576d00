"""The local test bed runs real workloads: control plane, node agent, Prometheus, operator."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.integration


def test_apiserver_is_ready(cluster):
    assert cluster.kubectl("get", "--raw", "/readyz").stdout == "ok"

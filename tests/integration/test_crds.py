"""The CRDs against a real kube-apiserver: installed, discoverable, accepting every example, refusing
every invalid one with the field and message the user needs, and printing status in `kubectl get`.

Applies use ``--server-side --validate=strict``: strict field validation is what refuses unknown
fields (a structural schema otherwise prunes them silently; see test_unknown_fields_...).
"""

from __future__ import annotations

import json
import re
import secrets
from pathlib import Path
from typing import Any

import pytest
import yaml
from noria.api import KINDS
from noria_testbed.processes import wait_until

pytestmark = pytest.mark.integration

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
VALID = sorted(EXAMPLES.glob("[0-9][0-9]-*/*.yaml"))
INVALID = sorted(p for p in (EXAMPLES / "invalid").glob("*.yaml") if not p.name.endswith(".original.yaml"))
STRICT_APPLY = ("apply", "--server-side", "--validate=strict", "--field-manager=noria-tests")


@pytest.fixture(scope="module")
def rejections_namespace(cluster: Any) -> Any:
    """One namespace for all the invalid examples: nothing they try is stored, so they cannot
    disturb each other, and the module does not wait for a fresh namespace twenty times."""
    name = f"t-invalid-{secrets.token_hex(3)}"
    cluster.kubectl("create", "namespace", name)
    yield name
    cluster.kubectl("delete", "namespace", name, "--wait=false", check=False)


def directive(path: Path, name: str) -> str | None:
    match = re.search(rf"^# {re.escape(name)}: (.+)$", path.read_text(), re.MULTILINE)
    return match.group(1).strip() if match else None


def only_doc(path: Path) -> dict[str, Any]:
    (doc,) = [d for d in yaml.safe_load_all(path.read_text()) if d]
    return doc


def test_the_three_crds_are_installed_and_grouped(cluster: Any, namespace: str) -> None:
    names = cluster.kubectl("get", "crd", "-o", "name").stdout.split()
    for kind in KINDS:
        assert f"customresourcedefinition.apiextensions.k8s.io/{kind.crd_name}" in names
        cluster.kubectl("wait", "--for=condition=Established", "--timeout=30s", f"crd/{kind.crd_name}")
    # The category and the short names resolve. The API server publishes discovery for a new CRD a
    # moment after it is Established, and kubectl caches discovery: allow a few seconds.
    wait_until(
        "`kubectl get noria` to resolve the category",
        lambda: cluster.kubectl("get", "noria", "-n", namespace, check=False).returncode == 0,
        timeout=30,
        on_timeout=lambda: cluster.kubectl("get", "noria", "-n", namespace, check=False).stderr,
    )
    assert cluster.kubectl("get", "noria", "-n", namespace).stderr.strip() == f"No resources found in {namespace} namespace."
    assert cluster.kubectl("get", "tp,mv,mro", "-n", namespace).returncode == 0
    assert cluster.kubectl("get", "rollouts.noria.dev", "-n", namespace).returncode == 0


@pytest.mark.parametrize("path", VALID, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_valid_example_is_accepted(cluster: Any, namespace: str, path: Path) -> None:
    out = cluster.kubectl(*STRICT_APPLY, "-n", namespace, "-f", str(path), check=False)
    assert out.returncode == 0, out.stderr
    stored = json.loads(cluster.kubectl("get", "-n", namespace, "-f", str(path), "-o", "json").stdout)
    items = stored.get("items", [stored])
    for doc, obj in zip(yaml.safe_load_all(path.read_text()), items, strict=True):
        # nothing the user wrote was pruned (free-form params and spaces included); a ConfigMap has data
        body = "spec" if "spec" in doc else "data"
        assert_contains(obj[body], doc[body], body)


def assert_contains(actual: Any, expected: Any, where: str) -> None:
    if isinstance(expected, dict):
        assert isinstance(actual, dict), where
        for key, value in expected.items():
            assert key in actual, f"{where}.{key} was dropped by the API server"
            assert_contains(actual[key], value, f"{where}.{key}")
    elif isinstance(expected, list):
        assert isinstance(actual, list) and len(actual) == len(expected), where
        for i, (a, e) in enumerate(zip(actual, expected, strict=True)):
            assert_contains(a, e, f"{where}[{i}]")
    else:
        assert actual == expected, f"{where}: {actual!r} != {expected!r}"


@pytest.mark.parametrize("path", INVALID, ids=lambda p: p.name)
def test_invalid_example_is_rejected_naming_field_and_reason(
    cluster: Any, rejections_namespace: str, path: Path
) -> None:
    namespace = rejections_namespace
    field, _, fragment = (directive(path, "expect") or "").partition(" ")
    assert field and fragment, f"{path.name}: missing '# expect: <field> <message>'"
    original = directive(path, "original")
    if original:
        cluster.kubectl(*STRICT_APPLY, "-n", namespace, "-f", str(path.parent / original))
    out = cluster.kubectl(*STRICT_APPLY, "-n", namespace, "-f", str(path), check=False)
    assert out.returncode != 0, f"{path.name} was accepted:\n{out.stdout}"
    # the API server spells a field error "<path>: <reason>" (server-side apply: ".<path>: ...")
    assert re.search(rf"(^|[\s.]){re.escape(field)}: ", out.stderr, re.MULTILINE), (
        f"the API server's answer does not name {field}:\n{out.stderr}"
    )
    assert fragment in out.stderr, f"the API server's answer lacks {fragment!r}:\n{out.stderr}"
    if original:  # and the stored object is the original, unchanged
        stored = json.loads(cluster.kubectl("get", "-n", namespace, "-f", str(path), "-o", "json").stdout)
        assert_contains(stored["spec"], only_doc(path.parent / original)["spec"], "spec")
    else:
        name = only_doc(path)["metadata"]["name"]
        kind = only_doc(path)["kind"].lower() + ".noria.dev"
        gone = cluster.kubectl("get", kind, name, "-n", namespace, check=False)
        assert gone.returncode != 0 and "NotFound" in gone.stderr


def test_unknown_fields_are_refused_by_client_side_strict_validation_too(cluster: Any, namespace: str) -> None:
    path = EXAMPLES / "invalid" / "rollout-unknown-field.yaml"
    out = cluster.kubectl("apply", "--validate=strict", "-n", namespace, "-f", str(path), check=False)
    assert out.returncode != 0
    assert 'unknown field "spec.replica"' in out.stderr


def test_unknown_fields_are_pruned_silently_without_strict_validation(cluster: Any, namespace: str) -> None:
    """Why the docs insist on --validate=strict: without it a typo disappears without a word."""
    path = EXAMPLES / "invalid" / "rollout-unknown-field.yaml"
    cluster.kubectl("create", "--validate=false", "-n", namespace, "-f", str(path))
    stored = json.loads(cluster.kubectl("get", "-n", namespace, "-f", str(path), "-o", "json").stdout)
    assert "replica" not in stored["spec"]
    assert stored["spec"]["replicas"] == 1  # the CRD's default


STATUS = {
    "trainingpipelines.noria.dev/churn": {
        "phase": "Ready",
        "lastTrigger": "drift",
        "lastTriggerAt": "2026-11-20T10:00:00Z",
        "latestVersion": "churn-v7",
        "championVersion": "churn-v6",
        "nextScheduledRun": "2026-11-29T02:00:00Z",
        "runCounter": 7,
        "observedGeneration": 1,
        "currentRun": None,
        "lastRuns": [
            {
                "id": "churn-r7",
                "trigger": "drift",
                "outcome": "Succeeded",
                "reason": "GatePassed",
                "startedAt": "2026-11-20T10:00:05Z",
                "finishedAt": "2026-11-20T10:03:17Z",
                "duration": "3m12s",
                "version": "churn-v7",
            }
        ],
        "pendingTriggers": [{"trigger": "schedule", "at": "2026-11-20T10:01:00Z", "reason": "cron"}],
        "conditions": [
            {"type": "Ready", "status": "True", "reason": "ChampionServing", "message": "churn-v6",
             "lastTransitionTime": "2026-11-20T10:03:17Z", "observedGeneration": 1},
        ],
    },
    "modelversions.noria.dev/churn-v1": {
        "stage": "Canary",
        "traffic": 10,
        "metric": "f1=0.81",
        "history": [
            {"stage": "Candidate", "at": "2026-11-20T10:03:17Z", "reason": "gate passed", "by": "pipeline/churn"},
            {"stage": "Canary", "at": "2026-11-20T10:05:00Z", "reason": "rollout started", "by": "rollout/churn"},
        ],
        "observedGeneration": 1,
    },
    "rollouts.noria.dev/churn": {
        "phase": "Progressing",
        "stableVersion": "churn-v6",
        "canaryVersion": "churn-v7",
        "currentStep": 2,
        "canaryWeight": 10,
        "weights": {"churn-v6": 90, "churn-v7": 10},
        "analysis": {"passed": 3, "failed": 0, "errors": 0, "inconclusive": 1,
                     "last": {"at": "2026-11-20T10:09:00Z", "outcome": "Successful",
                              "checks": [{"name": "errorRate", "outcome": "Successful", "value": "0.002"}]},
                     "consecutiveSuccesses": 2},
        "lastVerdict": {"version": "churn-v6", "stage": "Production", "reason": "Promoted",
                        "message": "canary analysis passed", "at": "2026-11-19T09:00:00Z"},
        "previousVersion": "churn-v5",
        "rollbackWindowEndsAt": "2026-11-19T10:00:00Z",
        "noProgressSince": "2026-11-20T10:08:00Z",
        "observedGeneration": 1,
    },
}


def test_printer_columns_show_status(cluster: Any, namespace: str) -> None:
    for folder in ("01-training-pipeline", "02-model-version-import", "03-rollout-canary"):
        cluster.kubectl(*STRICT_APPLY, "-n", namespace, "-f", str(EXAMPLES / folder))
    for ref, status in STATUS.items():
        cluster.kubectl(
            "patch", ref, "-n", namespace, "--subresource=status", "--type=merge", "-p", json.dumps({"status": status})
        )
    tp = table(cluster.kubectl("get", "tp", "churn", "-n", namespace).stdout)
    assert tp["PHASE"] == "Ready" and tp["LAST TRIGGER"] == "drift"
    assert tp["LATEST"] == "churn-v7" and tp["CHAMPION"] == "churn-v6"
    assert tp["NEXT RUN"] == "2026-11-29T02:00:00Z" and tp["AGE"]
    mv = table(cluster.kubectl("get", "mv", "churn-v1", "-n", namespace).stdout)
    assert mv == mv | {"PIPELINE": "churn", "VERSION": "1", "STAGE": "Canary", "METRIC": "f1=0.81", "TRAFFIC": "10"}
    mro = table(cluster.kubectl("get", "mro", "churn", "-n", namespace).stdout)
    assert mro == mro | {"PHASE": "Progressing", "STABLE": "churn-v6", "CANARY": "churn-v7", "STEP": "2", "WEIGHT": "10"}
    # all three at once, as the issue asks
    combined = cluster.kubectl("get", "tp,mv,mro", "-n", namespace).stdout
    for header in ("LAST TRIGGER", "CHAMPION", "STAGE", "METRIC", "STABLE", "WEIGHT"):
        assert header in combined
    # the status written above survived the schema (nothing pruned)
    stored = json.loads(cluster.kubectl("get", "mro", "churn", "-n", namespace, "-o", "json").stdout)
    assert stored["status"]["analysis"]["last"]["checks"][0]["value"] == "0.002"
    assert stored["status"]["lastVerdict"] == STATUS["rollouts.noria.dev/churn"]["lastVerdict"]
    assert stored["status"]["noProgressSince"] == "2026-11-20T10:08:00Z"
    # a verdict is one of the four stages a judgement gives
    out = cluster.kubectl(
        "patch", "mro", "churn", "-n", namespace, "--subresource=status", "--type=merge",
        "-p", json.dumps({"status": {"lastVerdict": {"version": "churn-v7", "stage": "Canary"}}}), check=False,
    )
    assert out.returncode != 0 and "status.lastVerdict.stage" in out.stderr and "Unsupported value" in out.stderr


def test_status_schema_refuses_an_unknown_stage(cluster: Any, namespace: str) -> None:
    cluster.kubectl(*STRICT_APPLY, "-n", namespace, "-f", str(EXAMPLES / "02-model-version-import"))
    out = cluster.kubectl(
        "patch", "mv", "churn-v1", "-n", namespace, "--subresource=status", "--type=merge",
        "-p", json.dumps({"status": {"stage": "Serving"}}), check=False,
    )
    assert out.returncode != 0 and "status.stage" in out.stderr and "Unsupported value" in out.stderr


def test_server_side_defaults_are_filled_in(cluster: Any, namespace: str) -> None:
    path = EXAMPLES / "01-training-pipeline" / "regression-minimal.yaml"
    cluster.kubectl(*STRICT_APPLY, "-n", namespace, "-f", str(path))
    spec = json.loads(cluster.kubectl("get", "-n", namespace, "-f", str(path), "-o", "json").stdout)["spec"]
    assert spec["approval"] == "automatic" and spec["historyLimit"] == 10 and spec["data"]["format"] == "csv"
    path = EXAMPLES / "04-rollout-blue-green" / "rollout.yaml"
    cluster.kubectl(*STRICT_APPLY, "-n", namespace, "-f", str(path))
    spec = json.loads(cluster.kubectl("get", "-n", namespace, "-f", str(path), "-o", "json").stdout)["spec"]
    assert spec["progressDeadline"] == "10m" and spec["predictionLog"] is True


def table(text: str) -> dict[str, str]:
    """The one row of `kubectl get` output as {column: value}, split on the header's column starts."""
    header, row = text.splitlines()[:2]
    starts = [m.start() for m in re.finditer(r"(?:^|(?<=\s\s))\S", header)]
    cols = [header[a:b].strip() for a, b in zip(starts, starts[1:] + [None], strict=True)]
    vals = [row[a:b].strip() for a, b in zip(starts, starts[1:] + [None], strict=True)]
    return dict(zip(cols, vals, strict=True))

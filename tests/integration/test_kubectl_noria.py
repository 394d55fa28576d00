"""``kubectl noria`` through the real kubectl, against the test bed with the operator running.

kubectl finds the plugin as users get it: the ``kubectl-noria`` entry point installed in the venv's
bin directory, on PATH. Every command is run as ``kubectl noria ...``; what it wrote is read back
with plain kubectl, and the operator's reaction is waited for: a canary promoted, paused, aborted,
retried and promoted in full; ModelVersions approved and rejected under the chart's admission
policy (so the recorded name must be the caller's own); a pipeline retrained. The trees are compared
with the objects they describe.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from noria import contracts as ct
from rollout_helpers import (
    condition,
    create_model_version,
    get,
    rollout,
    rollout_status,
    save_model,
    stage_of,
)
from rollout_helpers import wait_for as wait_until_true
from training_helpers import classification_frame, pipeline_yaml, write_data

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "noria"
VENV_BIN = Path(sys.executable).parent  # where pip installed the kubectl-noria entry point
DOCS_CAPTURE = os.environ.get("NORIA_CLI_CAPTURE")  # a file to save the mid-canary tree in (docs/operations/cli.md)


def wait_for(what: str, check: Any, timeout: float = 120.0, on_timeout: Any = None) -> Any:
    """rollout_helpers.wait_for, printing how long the operator took (pytest -s shows it)."""
    started = time.monotonic()
    value = wait_until_true(what, check, timeout=timeout, on_timeout=on_timeout)
    print(f"FIGURE {what}: {time.monotonic() - started:.1f}s")
    return value


def plugin_env(cluster: Any) -> dict[str, str]:
    env = dict(cluster.env)
    env["PATH"] = f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}"
    env.pop("NO_COLOR", None)
    return env


def noria(cluster: Any, *args: str, ok: bool = True, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """``kubectl noria <args>`` with the test bed's kubectl; ``ok``: the exit status must be 0 (else not 0)."""
    out = subprocess.run([str(cluster.binaries / "kubectl"), "noria", *args], capture_output=True, text=True,
                         env=plugin_env(cluster), timeout=timeout)
    assert (out.returncode == 0) == ok, f"kubectl noria {' '.join(args)}: exit {out.returncode}\n{out.stdout}\n{out.stderr}"
    return out


def field(text: str, key: str) -> str:
    """The value of the first ``Key:   value`` line of a tree."""
    return next((line.split(":", 1)[1].strip() for line in text.splitlines() if line.startswith(key + ":")), "")


def statuses(frames: str) -> list[str]:
    return [line.split(":", 1)[1].strip() for line in frames.splitlines() if line.startswith("Status:")]


def annotations(cluster: Any, namespace: str, kind: str, name: str) -> dict[str, str]:
    return (get(cluster, namespace, kind, name) or {})["metadata"].get("annotations") or {}


def deploy_env() -> dict[str, str]:
    # No analysis checks here: the commands, not Prometheus, move the canary.
    return {"NORIA_ROLLOUT_INTERVAL_SECONDS": "0.5", "NORIA_ROUTER_BACKEND_URLS": "clusterIP"}


def test_kubectl_lists_the_plugin_from_the_venv(cluster: Any) -> None:
    out = subprocess.run([str(cluster.binaries / "kubectl"), "plugin", "list"], capture_output=True, text=True,
                         env=plugin_env(cluster), timeout=30)
    assert str(VENV_BIN / "kubectl-noria") in out.stdout, out.stdout + out.stderr
    help_text = noria(cluster, "--help").stdout
    for command in ("get", "history", "promote", "abort", "retry", "pause", "resume", "approve", "reject", "retrain"):
        assert f"    {command} " in help_text, help_text


def test_a_canary_driven_by_kubectl_noria(cluster: Any, namespace: str, operator_factory: Any,
                                          store_claim: Any) -> None:
    store_claim(namespace)
    create_model_version(cluster, save_model(cluster.store_dir, namespace, 1))
    operator_factory(namespace, **deploy_env())
    steps = [{"setWeight": 25}, {"pause": {}}, {"setWeight": 60}, {"pause": {}}]
    # scaleDownDelay 60s: an aborted candidate's pods still run when it is retried (no second pod start).
    cluster.kubectl("apply", "-f", "-", input=rollout(namespace, {"canary": {"steps": steps}}, scaleDownDelay="60s"))
    wait_for("churn-v1 stable", lambda: rollout_status(cluster, namespace).get("phase") == "Healthy", timeout=120,
             on_timeout=lambda: str(rollout_status(cluster, namespace)))
    n = ("-n", namespace)

    # Nothing to promote, abort or retry yet: refused, nothing written.
    refused = noria(cluster, "promote", "churn", *n, ok=False).stderr
    assert "no canary to promote" in refused and "churn-v1 serves all traffic" in refused, refused
    assert "nothing to retry" in noria(cluster, "retry", "churn", *n, ok=False).stderr
    assert "nothing to abort" in noria(cluster, "abort", "churn", *n, ok=False).stderr
    steering = {ct.ANNOTATION_PROMOTE, ct.ANNOTATION_ABORT, ct.ANNOTATION_RETRY}
    assert not steering & set(annotations(cluster, namespace, "mro", "churn"))

    create_model_version(cluster, save_model(cluster.store_dir, namespace, 2, seed=1))
    wait_for("canary held at step 1 (pause until promoted)", lambda: rollout_status(cluster, namespace).get(
        "currentStep") == 1 and condition(rollout_status(cluster, namespace), "Paused").get("status") == "True",
        timeout=120, on_timeout=lambda: str(rollout_status(cluster, namespace)))

    # The tree against the objects it describes.
    tree = noria(cluster, "get", "rollout", "churn", *n).stdout
    obj = get(cluster, namespace, "mro", "churn")
    st = obj["status"]
    assert st["weights"] == {"churn-v1": 75, "churn-v2": 25}
    assert field(tree, "Stable") == f"churn-v1  {st['weights']['churn-v1']}%  (Production)", tree
    assert field(tree, "Canary") == f"churn-v2  {st['weights']['churn-v2']}%  (Canary)", tree
    assert field(tree, "Step") == f"1/{len(steps) + 1}  (pause until promoted)", tree
    assert "✔  0  setWeight 25" in tree and "▶  1  pause until promoted" in tree, tree
    assert "4  switch (all traffic, promote)" in tree, tree
    for version in ("churn-v1", "churn-v2"):
        pods = json.loads(cluster.kubectl("get", "pods", *n, "-l", f"{ct.LABEL_VERSION}={version}",
                                          "-o", "json").stdout)["items"]
        assert pods, f"no pod of {version}"
        for pod in pods:
            assert f"□ {pod['metadata']['name']}" in tree and "ready:1/1" in tree, tree
    assert "churn-router" in tree, tree
    assert "\033[" not in tree, "colour escapes in a pipe"
    as_json = json.loads(noria(cluster, "get", "rollout", "churn", *n, "-o", "json").stdout)
    assert as_json["metadata"]["uid"] == obj["metadata"]["uid"] and as_json["spec"] == obj["spec"]
    listing = noria(cluster, "get", "rollouts", *n).stdout
    assert listing.splitlines()[1].split()[:4] == ["churn", st["phase"], "churn-v1", "churn-v2"], listing
    if DOCS_CAPTURE:
        Path(DOCS_CAPTURE).write_text(f"$ kubectl noria get rollout churn -n {namespace}\n{tree}")

    # pause: spec.paused, and promote refused while paused; resume clears it.
    said = noria(cluster, "pause", "churn", *n).stdout
    assert "holds at step 1 with churn-v2 at 25%" in said, said
    assert get(cluster, namespace, "mro", "churn")["spec"]["paused"] is True
    wait_for("phase Paused (PausedByUser)", lambda: rollout_status(cluster, namespace).get("phase") == "Paused"
             and condition(rollout_status(cluster, namespace), "Progressing").get("reason") == "PausedByUser",
             timeout=30, on_timeout=lambda: str(rollout_status(cluster, namespace)))
    assert field(noria(cluster, "get", "rollout", "churn", *n).stdout, "Paused").startswith("yes (spec.paused)")
    assert "is paused (spec.paused)" in noria(cluster, "promote", "churn", *n, ok=False).stderr
    assert "carries on" in noria(cluster, "resume", "churn", *n).stdout
    assert get(cluster, namespace, "mro", "churn")["spec"]["paused"] is False

    # promote: past the indefinite pause to setWeight 60, then held at the next pause.
    said = noria(cluster, "promote", "churn", *n).stdout
    assert "goes past step 1 (pause until promoted) to step 2 (setWeight 60)" in said, said
    wait_for("step 3 at 60%", lambda: rollout_status(cluster, namespace).get("currentStep") == 3
             and rollout_status(cluster, namespace).get("weights") == {"churn-v1": 40, "churn-v2": 60}, timeout=60,
             on_timeout=lambda: str(rollout_status(cluster, namespace)))
    assert ct.ANNOTATION_PROMOTE not in annotations(cluster, namespace, "mro", "churn")  # consumed

    # abort: traffic back to churn-v1, churn-v2 Rejected; retry brings it back.
    said = noria(cluster, "abort", "churn", *n).stdout
    assert "all traffic goes back to churn-v1" in said, said
    wait_for("aborted", lambda: rollout_status(cluster, namespace).get("weights") == {"churn-v1": 100}
             and stage_of(cluster, namespace, "churn-v2") == "Rejected", timeout=60,
             on_timeout=lambda: str(rollout_status(cluster, namespace)))
    assert condition(rollout_status(cluster, namespace), "Degraded").get("reason") == "AbortedByUser"
    said = noria(cluster, "retry", "churn", *n).stdout
    assert "churn-v2" in said and "walks the steps from the first" in said, said
    wait_for("churn-v2 canary again, held at step 1", lambda: rollout_status(cluster, namespace).get(
        "canaryVersion") == "churn-v2" and rollout_status(cluster, namespace).get("currentStep") == 1, timeout=90,
        on_timeout=lambda: str(rollout_status(cluster, namespace)))

    # promote --full, watched with -w: the frames show the rollout going from Progressing to Healthy.
    watcher = subprocess.Popen([str(cluster.binaries / "kubectl"), "noria", "get", "rollout", "churn", *n, "-w"],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=plugin_env(cluster))
    try:
        time.sleep(3)
        said = noria(cluster, "promote", "churn", "--full", *n).stdout
        assert "churn-v2 skips every remaining step and takes all traffic; churn-v1 retires" in said, said
        wait_for("churn-v2 promoted", lambda: rollout_status(cluster, namespace).get("stableVersion") == "churn-v2"
                 and rollout_status(cluster, namespace).get("phase") == "Healthy", timeout=90,
                 on_timeout=lambda: str(rollout_status(cluster, namespace)))
        time.sleep(3)  # one more refresh
    finally:
        watcher.terminate()
        frames, errors = watcher.communicate(timeout=10)
    seen = statuses(frames)
    assert "॥ Paused" in seen and seen[-1] == "✔ Healthy", frames[-3000:] + errors  # held for a person, then promoted

    history = noria(cluster, "history", "version", "churn-v2", *n).stdout
    stages = [h["stage"] for h in get(cluster, namespace, "mv", "churn-v2")["status"]["history"]]
    assert stages[-1] == "Production" and "Rejected" in stages, stages
    lines = [line.split() for line in history.splitlines()[2:]]
    assert [line[3] for line in lines] == stages, history  # AT is two words (date, time), then VERSION, STAGE
    assert json.loads(noria(cluster, "history", "version", "churn-v2", *n, "-o", "json").stdout) == \
        get(cluster, namespace, "mv", "churn-v2")["status"]["history"]


@pytest.fixture
def helm() -> Path:
    built = subprocess.run(["bash", str(ROOT / "hack" / "build-helm.sh")], capture_output=True, text=True)
    assert built.returncode == 0, built.stderr[-3000:]
    return Path(built.stdout.strip().splitlines()[-1]) / "helm"


def admission_policy(cluster: Any, helm: Path, namespace: str) -> None:
    """The chart's policy, governing only ``namespace``, with the test bed's admin (system:masters) as
    the approver group: an approval is then admitted only if it holds the admin's own user name."""
    selector = {"matchLabels": {"kubernetes.io/metadata.name": namespace}}
    out = subprocess.run([str(helm), "template", f"cli-{namespace}", str(CHART), "--namespace", namespace,
                          "--show-only", "templates/admission-policy.yaml",
                          "--set-json", f"admission.namespaceSelector={json.dumps(selector)}",
                          "--set-json", 'admission.approverGroups=["system:masters"]'],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    cluster.kubectl("apply", "--server-side", "-f", "-", input=out.stdout)


def test_versions_approved_and_rejected_in_the_callers_own_name(cluster: Any, namespace: str,
                                                                 operator_factory: Any, store_claim: Any,
                                                                 helm: Path) -> None:
    store_claim(namespace)
    admission_policy(cluster, helm, namespace)
    operator_factory(namespace)
    n = ("-n", namespace)
    me = cluster.kubectl("auth", "whoami", "-o", "jsonpath={.status.userInfo.username}").stdout.strip()
    assert me
    # The policy is live once it refuses an approval in someone else's name (it takes a moment).
    for number in (3, 4, 5):
        cluster.kubectl("apply", "-f", "-", input=json.dumps(save_model(cluster.store_dir, namespace, number)))
    probe = iter(range(1000))
    wait_for("the admission policy to refuse another name", lambda: cluster.kubectl(
        "annotate", "--overwrite", *n, "mv/churn-v5", f"{ct.ANNOTATION_APPROVE}=someone-else-{next(probe)}",
        check=False).returncode != 0, timeout=60)
    for name in ("churn-v3", "churn-v4"):
        wait_for(f"{name} Registered", lambda name=name: stage_of(cluster, namespace, name) == "Registered", timeout=60)

    said = noria(cluster, "approve", "churn-v3", *n).stdout
    assert f"Registered -> Approved, recorded as by user/{me}" in said, said
    assert annotations(cluster, namespace, "mv", "churn-v3")[ct.ANNOTATION_APPROVE] == me
    wait_for("churn-v3 Approved", lambda: stage_of(cluster, namespace, "churn-v3") == "Approved", timeout=60)
    assert get(cluster, namespace, "mv", "churn-v3")["status"]["history"][-1]["by"] == f"user/{me}"
    assert "only a version in stage Registered or Candidate can be approved" in noria(
        cluster, "approve", "churn-v3", *n, ok=False).stderr

    said = noria(cluster, "reject", "mv/churn-v4", *n).stdout
    assert f"Registered -> Rejected, recorded as by user/{me}" in said, said
    wait_for("churn-v4 Rejected", lambda: stage_of(cluster, namespace, "churn-v4") == "Rejected", timeout=60)
    assert "can be approved" in noria(cluster, "approve", "churn-v4", *n, ok=False).stderr
    assert "approve acts on ModelVersions, not Rollouts" in noria(cluster, "approve", "mro/churn-v4", *n,
                                                                      ok=False).stderr
    assert "not found in namespace" in noria(cluster, "approve", "churn-v9", *n, ok=False).stderr

    tree = noria(cluster, "get", "version", "churn-v3", *n).stdout
    mv = get(cluster, namespace, "mv", "churn-v3")
    assert field(tree, "Stage") == "✔ Approved" and field(tree, "Digest") == mv["spec"]["artifact"]["digest"], tree
    assert field(tree, "Requested") == f"{ct.ANNOTATION_APPROVE}={me}", tree
    listing = noria(cluster, "get", "versions", *n).stdout
    assert {tuple(line.split()[:2]) for line in listing.splitlines()[1:]} >= {
        ("churn-v3", "Approved"), ("churn-v4", "Rejected")}, listing
    assert namespace in noria(cluster, "get", "versions", "-A").stdout


def test_a_pipeline_retrained_with_kubectl_noria(cluster: Any, namespace: str, operator_factory: Any,
                                                  store_claim: Any) -> None:
    store_claim(namespace)
    source = write_data(cluster.store_dir, namespace, "churn", classification_frame(600))
    operator_factory(namespace)
    triggers = {"newData": {"minNewRows": 100000}, "cooldown": "1s"}
    cluster.kubectl("apply", "-n", namespace, "-f", "-", input=pipeline_yaml("churn", source, triggers=triggers))
    n = ("-n", namespace)

    def runs() -> list[dict]:
        return ((get(cluster, namespace, "tp", "churn") or {}).get("status") or {}).get("lastRuns") or []

    wait_for("the first run's version", lambda: len(runs()) == 1 and stage_of(cluster, namespace, "churn-v1"),
             timeout=180, on_timeout=lambda: str(runs()))
    said = noria(cluster, "retrain", "churn", *n).stdout
    value = annotations(cluster, namespace, "tp", "churn")[ct.ANNOTATION_RETRAIN]
    assert f"one more training run ({ct.ANNOTATION_RETRAIN}={value!r})" in said, said
    wait_for("a manual run", lambda: len(runs()) == 2 and runs()[0]["trigger"] == "manual"
             and runs()[0].get("outcome"), timeout=180, on_timeout=lambda: str(runs()))
    assert "is a TrainingPipeline: promote acts on Rollouts" in noria(cluster, "promote", "churn", *n, ok=False).stderr

    pipeline = get(cluster, namespace, "tp", "churn")
    st = pipeline["status"]
    tree = noria(cluster, "get", "pipeline", "churn", *n).stdout
    assert field(tree, "Champion") == st["championVersion"], tree
    for run in st["lastRuns"]:
        assert any(line.split()[:3] == [run["id"], run["trigger"], run["outcome"]] for line in tree.splitlines()), tree
    state = st["triggers"]["newData"]
    assert f"newData      {state['rows'] - state['baseline']['rows']} new rows of 100000 needed" in tree, tree
    assert f"manual       {ct.ANNOTATION_RETRAIN}={value!r} handled" in tree, tree
    history = noria(cluster, "history", "pipeline", "churn", *n).stdout
    if DOCS_CAPTURE:
        Path(f"{DOCS_CAPTURE}.pipeline").write_text(f"$ kubectl noria get pipeline churn -n {namespace}\n{tree}"
                                                    f"$ kubectl noria history pipeline churn -n {namespace}\n{history}")
    versions = [mv for mv in json.loads(cluster.kubectl("get", "mv", *n, "-o", "json").stdout)["items"]]
    assert len(versions) == 2, versions
    for mv in versions:
        version = mv["metadata"]["name"]
        for h in mv["status"]["history"]:
            assert any(version in line and h["stage"] in line and h["by"] in line for line in history.splitlines()), \
                history

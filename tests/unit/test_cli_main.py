"""The command line of `kubectl noria` (noria.cli.main) with an in-memory cluster, and kubeconfig loading."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

import pytest
import yaml
from noria import contracts as ct
from noria.cli import main as cli
from noria.cli.actions import Refused
from noria.cli.cluster import CliError, Conflict, load_target

NOW = dt.datetime(2026, 12, 2, 8, 0, tzinfo=dt.UTC)


class FakeCluster:
    """Objects by (kind, name); merge_patch answers 409 ``conflicts`` times first, as the API server
    does when the operator wrote in between."""

    def __init__(self, objects: dict[tuple[str, str], dict[str, Any]], conflicts: int = 0) -> None:
        self.objects, self.conflicts, self.patches, self.namespace = objects, conflicts, [], "ml"

    def get(self, kind: str, name: str, namespace: str | None = None) -> dict[str, Any] | None:
        return self.objects.get((kind, name))

    def require(self, kind: str, name: str, namespace: str | None = None) -> dict[str, Any]:
        obj = self.get(kind, name)
        if obj is None:
            raise CliError(f"{kind} {name} not found")
        return obj

    def list(self, kind: str, **_: Any) -> list[dict[str, Any]]:
        return [o for (k, _n), o in self.objects.items() if k == kind]

    def merge_patch(self, kind: str, name: str, body: dict, resource_version: str | None = None) -> dict:
        if self.conflicts:
            self.conflicts -= 1
            self.objects[(kind, name)]["metadata"]["resourceVersion"] += "1"
            raise Conflict(f"{name} changed while this command ran: run it again")
        self.patches.append((kind, name, body, resource_version))
        return self.objects[(kind, name)]

    def whoami(self) -> str:
        return "alice"


def rollout(status: dict) -> dict:
    return {"metadata": {"name": "churn", "resourceVersion": "7"},
            "spec": {"source": {"pipeline": "churn"}, "strategy": {"canary": {"steps": [{"setWeight": 50}]}}},
            "status": status}


def run(cluster: FakeCluster, *argv: str) -> tuple[int, list[str]]:
    said: list[str] = []
    args = cli.build_parser().parse_args(list(argv))
    return cli.run_write(cluster, args, said.append, lambda: NOW), said


def test_a_write_carries_the_resource_version_it_was_decided_on() -> None:
    cluster = FakeCluster({("Rollout", "churn"): rollout({"stableVersion": "v1", "canaryVersion": "v2"})})
    code, said = run(cluster, "promote", "rollout/churn")
    assert code == 0 and "v2 goes past step 0" in said[0]
    assert cluster.patches == [("Rollout", "churn", {"metadata": {"annotations": {ct.ANNOTATION_PROMOTE: "true"}}}, "7")]


def test_a_conflict_is_read_and_decided_again() -> None:
    cluster = FakeCluster({("Rollout", "churn"): rollout({"stableVersion": "v1", "canaryVersion": "v2"})}, conflicts=2)
    assert run(cluster, "abort", "churn")[0] == 0
    assert cluster.patches[0][3] == "711"  # the third read's version


def test_an_object_that_keeps_changing_gives_up_with_a_clear_error() -> None:
    cluster = FakeCluster({("Rollout", "churn"): rollout({"canaryVersion": "v2"})}, conflicts=5)
    with pytest.raises(CliError, match="kept changing while this command ran"):
        run(cluster, "abort", "churn")


@pytest.mark.parametrize("argv, message", [
    (("approve", "churn"), "churn is a Rollout: approve acts on ModelVersions"),
    (("approve", "rollout/churn"), "approve acts on ModelVersions, not Rollouts"),
    (("promote", "thing/churn"), "unknown kind 'thing'"),
], ids=["name-of-another-kind", "prefix-of-another-kind", "unknown-kind"])
def test_the_wrong_kind_is_named(argv, message) -> None:
    cluster = FakeCluster({("Rollout", "churn"): rollout({})})
    with pytest.raises(Refused, match=message):
        run(cluster, *argv)
    assert cluster.patches == []


def test_approve_writes_who_the_api_server_says_the_caller_is() -> None:
    mv = {"metadata": {"name": "churn-v2", "resourceVersion": "3"}, "status": {"stage": "Candidate"}}
    cluster = FakeCluster({("ModelVersion", "churn-v2"): mv})
    run(cluster, "approve", "mv/churn-v2")
    assert cluster.patches[0][2] == {"metadata": {"annotations": {ct.ANNOTATION_APPROVE: "alice"}}}


def test_kubectl_flags_are_accepted_before_and_after_the_command() -> None:
    parser = cli.build_parser()
    before = parser.parse_args(["-n", "ml", "--context", "prod", "get", "rollout", "churn"])
    after = parser.parse_args(["get", "rollout", "churn", "-n", "ml", "--context", "prod", "-o", "yaml"])
    for args in (before, after):
        assert (args.namespace, args.context, args.name) == ("ml", "prod", "churn")
    assert after.output == "yaml"


def test_watch_redraws_in_place_on_a_terminal_and_appends_changed_frames_in_a_pipe() -> None:
    texts = iter(["a\n", "a\n", "b\n"])
    out: list[str] = []
    cli.watch(lambda: next(texts), out.append, is_tty=False, sleep=lambda _: None, frames=3)
    assert out == ["a\n", "\nb\n"]
    texts = iter(["a\n", "b\n"])
    out = []
    cli.watch(lambda: next(texts), out.append, is_tty=True, sleep=lambda _: None, frames=2)
    assert out == ["\033[H\033[2Ja\n", "\033[H\033[2Jb\n"]


def kubeconfig(path: Path, context: str, namespace: str | None, current: str | None) -> Path:
    ctx: dict[str, Any] = {"cluster": context, "user": context}
    if namespace:
        ctx["namespace"] = namespace
    path.write_text(yaml.safe_dump({
        "clusters": [{"name": context, "cluster": {"server": f"https://{context}.example:6443"}}],
        "contexts": [{"name": context, "context": ctx}],
        "users": [{"name": context, "user": {"token": "t"}}],
        **({"current-context": current} if current else {})}))
    return path


def test_kubeconfig_list_is_merged_as_kubectl_does(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    a = kubeconfig(tmp_path / "a", "dev", "team-a", current="dev")
    b = kubeconfig(tmp_path / "b", "prod", None, current="prod")
    monkeypatch.setenv("KUBECONFIG", f"{a}:{tmp_path / 'missing'}:{b}")
    target = load_target(None, None, None)
    assert (target.context, target.namespace) == ("dev", "team-a")  # the first current-context wins
    target = load_target(None, "prod", None)
    assert (target.context, target.namespace) == ("prod", "default")
    assert load_target(None, "prod", "ml").namespace == "ml"
    assert load_target(str(b), None, None).context == "prod"
    with pytest.raises(CliError, match="Context 'nope' not found"):
        load_target(None, "nope", None)
    with pytest.raises(CliError, match="not found"):
        load_target(str(tmp_path / "absent"), None, None)


def test_a_reader_who_may_not_list_pods_still_gets_the_rollout() -> None:
    class NoPods(FakeCluster):
        def list(self, kind: str, **kw: Any) -> list[dict[str, Any]]:
            if kind in ("Deployment", "Pod"):
                raise CliError("list deployments.apps in ml: forbidden: ...")
            return super().list(kind, **kw)

    cluster = NoPods({("Rollout", "churn"): rollout({"phase": "Healthy", "stableVersion": "v1"})})
    args = cli.build_parser().parse_args(["get", "rollout", "churn"])
    text = cli.read_once(cluster, args, NOW, cli.Style())
    assert "Stable:" in text and "(Deployments and pods not shown: list deployments.apps in ml: forbidden" in text

"""The node agent runs a container as the kubelet would: command/args against the image's
ENTRYPOINT/CMD (read from the repository's Dockerfiles), a service-account token of the pod's own
ServiceAccount (never the agent's credentials), and each pod's wildcard binds on its own address."""

from __future__ import annotations

import base64
import datetime as dt
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from noria_testbed.node_agent.images import (
    IMAGE_DOCKERFILES,
    ImageConfig,
    container_argv,
    image_config,
    parse_dockerfile,
    repository_name,
)
from noria_testbed.node_agent.launch import POD_IP_ENV, POD_NETWORK_DIR, launch_for
from noria_testbed.node_agent.service_account import (
    ClusterAccess,
    refresh_delay,
    token_kubeconfig,
    token_request,
    wants_token,
)
from noria_testbed.podspec import PodSpecError, Sources

ROOT = Path(__file__).resolve().parents[2]
TRAINER = ImageConfig(("python", "-m", "noria_trainer"), ("run", "--spec", "/etc/noria/run/spec.json"))


@pytest.mark.parametrize(("image", "name"), [
    ("ghcr.io/noria-dev/noria-operator:0.1.0", "noria-operator"),
    ("noria-server:test", "noria-server"),
    ("localhost:5000/team/noria-trainer", "noria-trainer"),
    ("noria-server@sha256:" + "a" * 64, "noria-server"),
    ("registry:5000/noria-server:1.2@sha256:" + "b" * 64, "noria-server"),
])
def test_repository_name_drops_registry_tag_and_digest(image, name):
    assert repository_name(image) == name


@pytest.mark.parametrize(("command", "args", "expected"), [
    ([], [], (["python", "-m", "noria_trainer", "run", "--spec", "/etc/noria/run/spec.json"], [])),
    ([], ["run", "--spec", "/s.json"], (["python", "-m", "noria_trainer"], ["run", "--spec", "/s.json"])),
    (["python", "-m", "x"], [], ([], ["python", "-m", "x"])),  # command replaces ENTRYPOINT and CMD
    (["python", "-m", "x"], ["--y"], ([], ["python", "-m", "x", "--y"])),
])
def test_command_replaces_entrypoint_and_args_replace_cmd(command, args, expected):
    assert container_argv("trainer", "noria-trainer:1", command, args, TRAINER) == expected


def test_an_image_without_known_entrypoint_needs_a_command():
    with pytest.raises(PodSpecError, match=r"container 'c'.*image 'busybox:1'.*give the container a command"):
        container_argv("c", "busybox:1", [], ["-c", "true"], None)
    assert container_argv("c", "busybox:1", ["sh"], ["-c", "true"], None) == ([], ["sh", "-c", "true"])


@pytest.mark.parametrize(("text", "expected"), [
    ('FROM a\nENTRYPOINT ["p", "-m", "x"]\nCMD ["serve"]\n', ImageConfig(("p", "-m", "x"), ("serve",))),
    ('FROM a\nCMD ["old"]\nFROM b\nENTRYPOINT ["p"]\n', ImageConfig(("p",), ())),  # a new stage starts afresh
    ("FROM a\nENTRYPOINT exec p --flag\n", ImageConfig(("/bin/sh", "-c", "exec p --flag"), ())),  # shell form
    ('FROM a\nCMD ["p", \\\n     "x"]\n', ImageConfig((), ("p", "x"))),  # continuation lines
    ('FROM a\n# ENTRYPOINT ["no"]\nentrypoint ["yes"]\n', ImageConfig(("yes",), ())),
])
def test_dockerfile_entrypoint_and_cmd_of_the_final_stage(text, expected):
    assert parse_dockerfile(text) == expected


def test_a_final_stage_without_entrypoint_or_cmd_is_refused_by_name():
    with pytest.raises(PodSpecError, match="x/Dockerfile: its final stage sets neither ENTRYPOINT nor CMD"):
        parse_dockerfile('FROM a\nENTRYPOINT ["p"]\nFROM b\nRUN true\n', source="x/Dockerfile")


@pytest.mark.parametrize("name", sorted(IMAGE_DOCKERFILES))
def test_every_image_in_the_table_has_a_dockerfile_whose_entrypoint_runs_a_module_of_this_repo(name):
    config = image_config(f"ghcr.io/noria-dev/{name}:0.1.0")
    assert config is not None and (ROOT / IMAGE_DOCKERFILES[name]).is_file()
    assert config.entrypoint[:2] == ("python", "-m")
    module = config.entrypoint[2]
    assert subprocess.run([sys.executable, "-c", f"import importlib.util as u; assert u.find_spec('{module}.__main__')"],
                          check=False).returncode == 0


def test_the_images_named_by_the_chart_and_the_operator_settings_are_in_the_table():
    values = yaml.safe_load((ROOT / "charts/noria/values.yaml").read_text())
    from noria.settings import Settings

    for image in (values["image"]["repository"], values["trainerImage"], values["serverImage"],
                  Settings().trainer_image, Settings().server_image):
        assert repository_name(image) in IMAGE_DOCKERFILES, image


def pod(**spec):
    return {"metadata": {"name": "p", "namespace": "ml", "uid": "u-1"},
            "spec": {"containers": [], **spec}}


def launch(tmp_path, container, *, credentials=None, pod_spec=None):
    return launch_for(pod(**(pod_spec or {})), container, sources=Sources(), volume_dirs={}, pod_dir=tmp_path,
                      pod_ip="127.9.0.2", python=sys.executable, run_id="r", credentials=credentials)


def test_args_only_run_the_images_entrypoint_with_the_venv_python(tmp_path):
    container = {"name": "operator", "image": "ghcr.io/noria-dev/noria-operator:0.1.0",
                 "args": ["--liveness=http://0.0.0.0:$(PORT)/healthz"], "env": [{"name": "PORT", "value": "8080"}]}
    assert launch(tmp_path, container).argv == [sys.executable, "-m", "noria", "--liveness=http://0.0.0.0:8080/healthz"]


def test_the_images_cmd_paths_are_rewritten_like_the_containers_own(tmp_path):
    container = {"name": "trainer", "image": "noria-trainer:test",
                 "terminationMessagePath": "/dev/termination-log"}
    argv = launch(tmp_path, container).argv
    assert argv[:3] == [sys.executable, "-m", "noria_trainer"]
    assert "/dev/termination-log" not in argv and str(tmp_path / "containers/trainer/termination-log") in argv


def test_a_pod_gets_its_own_token_kubeconfig_or_no_credentials(tmp_path, monkeypatch):
    container = {"name": "c", "command": ["true"]}
    with_token = launch(tmp_path, container, credentials=tmp_path / "serviceaccount")
    assert with_token.env["KUBECONFIG"] == str(tmp_path / "serviceaccount" / "kubeconfig")
    assert with_token.rewrite("/var/run/secrets/kubernetes.io/serviceaccount/token") == \
        str(tmp_path / "serviceaccount" / "token")
    monkeypatch.setenv("KUBECONFIG", "/admin/kubeconfig")  # the agent's own never leaks through the environment
    assert "KUBECONFIG" not in launch(tmp_path, container).env


@pytest.mark.parametrize(("pod_says", "account_says", "expected"), [
    (None, None, True), (None, False, False), (None, True, True),
    (False, True, False), (True, False, True),  # the pod's own setting wins
])
def test_automount_follows_the_pod_then_its_service_account(pod_says, account_says, expected):
    spec = {} if pod_says is None else {"automountServiceAccountToken": pod_says}
    account = {} if account_says is None else {"automountServiceAccountToken": account_says}
    assert wants_token(pod(**spec), account) is expected


def test_token_request_is_bound_to_the_pod_with_bounded_expiry_and_default_audience():
    request = token_request(pod(), seconds=600)
    assert request["spec"] == {"expirationSeconds": 600,
                               "boundObjectRef": {"apiVersion": "v1", "kind": "Pod", "name": "p", "uid": "u-1"}}


def test_token_kubeconfig_names_the_token_and_the_cluster_ca_but_no_client_certificate(tmp_path):
    token = tmp_path / "token"
    token.write_text("abc.def\n")
    config = token_kubeconfig(ClusterAccess("https://127.0.0.1:6443", b"PEM"), token, "ml", "noria")
    user = config["users"][0]
    assert user == {"name": "system:serviceaccount:ml:noria", "user": {"token": "abc.def", "tokenFile": str(token)}}
    assert base64.b64decode(config["clusters"][0]["cluster"]["certificate-authority-data"]) == b"PEM"
    assert config["contexts"][0]["context"]["namespace"] == "ml"
    assert "client-certificate" not in json.dumps(config)


def test_cluster_access_takes_only_the_cluster_of_the_agents_kubeconfig(tmp_path):
    (tmp_path / "ca.crt").write_bytes(b"CA")
    (tmp_path / "kubeconfig").write_text(yaml.safe_dump({
        "current-context": "admin", "contexts": [{"name": "admin", "context": {"cluster": "c", "user": "admin"}}],
        "clusters": [{"name": "c", "cluster": {"server": "https://127.0.0.1:1", "certificate-authority": "ca.crt"}}],
        "users": [{"name": "admin", "user": {"client-certificate": "admin.crt"}}]}))
    assert ClusterAccess.from_kubeconfig(tmp_path / "kubeconfig") == ClusterAccess("https://127.0.0.1:1", b"CA")


def test_a_token_is_renewed_at_eighty_percent_of_its_lifetime():
    issued = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
    assert refresh_delay(issued, issued + dt.timedelta(seconds=3600)) == pytest.approx(2880)
    assert refresh_delay(issued, issued) == 1.0


def test_a_wildcard_bind_in_a_pod_lands_on_the_pods_own_address():
    code = ("import socket; s = socket.socket(); s.bind(('0.0.0.0', 0)); print(s.getsockname()[0]); "
            "t = socket.socket(); t.bind(('127.0.0.1', 0)); print(t.getsockname()[0])")
    env = {**os.environ, POD_IP_ENV: "127.77.0.9", "PYTHONPATH": str(POD_NETWORK_DIR)}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stdout
    assert out.split() == ["127.77.0.9", "127.0.0.1"]  # an explicit address is left alone


class FakeTokenApi:
    """Answers TokenRequests with numbered tokens that live ``lifetime`` seconds (unit test only)."""

    def __init__(self, lifetime: float) -> None:
        self.lifetime, self.requests = lifetime, []

    async def request(self, method, path, *, body=None, **_):
        self.requests.append((method, path, body))
        expires = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=self.lifetime)
        return {"status": {"token": f"token-{len(self.requests)}",
                           "expirationTimestamp": expires.strftime("%Y-%m-%dT%H:%M:%SZ")}}

    async def get(self, path):
        return {"metadata": {"name": path.rsplit("/", 1)[-1]}}


def test_a_pods_token_is_written_private_and_renewed_before_it_expires(tmp_path):
    import asyncio

    from noria_testbed.node_agent.service_account import PodCredentials

    api = FakeTokenApi(lifetime=2)
    credentials = PodCredentials(api, ClusterAccess("https://127.0.0.1:1", b"CA"),
                                 pod(serviceAccountName="noria"), tmp_path / "sa")

    async def scenario():
        assert await credentials.wanted()
        await credentials.issue()
        first = (tmp_path / "sa" / "token").read_text()
        refresher = asyncio.create_task(credentials.refresh())
        await asyncio.sleep(2.5)  # 80% of a 1-2 s lifetime (the timestamp has whole seconds), at least 1 s
        refresher.cancel()
        return first, (tmp_path / "sa" / "token").read_text()

    first, renewed = asyncio.run(scenario())
    assert (first, renewed[:6]) == ("token-1", "token-") and renewed != first
    assert api.requests[0][1] == "/api/v1/namespaces/ml/serviceaccounts/noria/token"
    assert api.requests[0][2]["spec"]["boundObjectRef"]["uid"] == "u-1"
    config = json.loads((tmp_path / "sa" / "kubeconfig").read_text())
    assert config["users"][0]["user"]["token"] == renewed
    for name in ("token", "ca.crt", "namespace", "kubeconfig"):
        assert (tmp_path / "sa" / name).stat().st_mode & 0o077 == 0, name

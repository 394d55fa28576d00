"""The node agent's pure rules: env expansion, path rewriting, argv, status, scrape targets."""

from __future__ import annotations

import sys

import pytest
from noria_testbed.podspec import (
    ContainerState,
    PathRewriter,
    PodSpecError,
    Sources,
    container_env,
    expand,
    pod_phase,
    pod_status,
    python_aware_argv,
    sanitise_label,
    scrape_targets,
    should_restart,
    termination_message,
)

POD = {
    "metadata": {"name": "churn-v7-abc", "namespace": "ml", "uid": "u-1",
                 "labels": {"app": "churn", "noria.dev/version": "v7"}, "annotations": {"a": "b"}},
    "spec": {"nodeName": "noria-local", "containers": [{"name": "server", "ports": [
        {"name": "http", "containerPort": 8080}, {"name": "grpc", "containerPort": 9000}]}]},
}


@pytest.mark.parametrize(("text", "expected"), [
    ("$(A)", "x"),
    ("pre-$(A)-post", "pre-x-post"),
    ("$$(A)", "$(A)"),
    ("$(MISSING)", "$(MISSING)"),
    ("$(A", "$(A"),
    ("cost $5", "cost $5"),
    ("$", "$"),
    ("$(A)$(B)", "xy"),
])
def test_expand_follows_kubernetes_rules(text, expected):
    assert expand(text, {"A": "x", "B": "y"}) == expected


def test_env_resolves_values_field_refs_and_config_maps_in_order():
    container = {"name": "server", "env": [
        {"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
        {"name": "URL", "value": "http://$(POD_IP):8080"},
        {"name": "NS", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}},
        {"name": "VERSION", "valueFrom": {"fieldRef": {"fieldPath": "metadata.labels['noria.dev/version']"}}},
        {"name": "MODE", "valueFrom": {"configMapKeyRef": {"name": "cfg", "key": "mode"}}},
        {"name": "TOKEN", "valueFrom": {"secretKeyRef": {"name": "s", "key": "t"}}},
        {"name": "OPT", "valueFrom": {"configMapKeyRef": {"name": "absent", "key": "k", "optional": True}}},
    ], "envFrom": [{"configMapRef": {"name": "cfg"}, "prefix": "CFG_"}]}
    sources = Sources(config_maps={"cfg": {"mode": "router"}}, secrets={"s": {"t": "secret"}})
    env = container_env(POD, container, "127.0.0.7", sources)
    assert env == {"CFG_mode": "router", "POD_IP": "127.0.0.7", "URL": "http://127.0.0.7:8080", "NS": "ml",
                   "VERSION": "v7", "MODE": "router", "TOKEN": "secret"}


def test_env_names_the_missing_config_map_key():
    container = {"name": "server", "env": [{"name": "MODE", "valueFrom": {"configMapKeyRef": {"name": "cfg", "key": "x"}}}]}
    with pytest.raises(PodSpecError, match=r"container 'server' env\[0\] \(MODE\): key 'x' in ConfigMap 'cfg' not found"):
        container_env(POD, container, "127.0.0.7", Sources(config_maps={"cfg": {}}))


def test_unsupported_field_ref_is_a_clear_error():
    container = {"name": "c", "env": [{"name": "X", "valueFrom": {"fieldRef": {"fieldPath": "spec.hostname"}}}]}
    with pytest.raises(PodSpecError, match="spec.hostname"):
        container_env(POD, container, "127.0.0.7", Sources())


@pytest.mark.parametrize(("text", "expected"), [
    ("/var/lib/noria/store", "/L/store"),
    ("/var/lib/noria/store/ml/v1/model.skops", "/L/store/ml/v1/model.skops"),
    ("file:///var/lib/noria/store/ml/", "file:///L/store/ml/"),
    ("--output=/var/lib/noria/store/x", "--output=/L/store/x"),
    ("/var/lib/noria/storehouse", "/var/lib/noria/storehouse"),
    ("/srv/var/lib/noria/store", "/srv/var/lib/noria/store"),
    ("/etc/run/spec.json", "/L/run/spec.json"),
    ("/etc/run/sub/x", "/L/sub/x"),
    ("/dev/termination-log", "/L/term"),
    ("/dev/termination-logs", "/dev/termination-logs"),
    ("a=/etc/run/x,b=/etc/run/y", "a=/L/run/x,b=/L/run/y"),
])
def test_paths_under_mounts_are_rewritten_at_path_boundaries(text, expected):
    rewrite = PathRewriter({"/var/lib/noria/store/": "/L/store", "/etc/run": "/L/run", "/etc/run/sub": "/L/sub",
                            "/dev/termination-log": "/L/term"})
    assert rewrite(text) == expected


def test_python_as_first_word_becomes_this_interpreter():
    assert python_aware_argv(["python", "-m", "noria_server"], ["serve"]) == [sys.executable, "-m", "noria_server", "serve"]
    assert python_aware_argv(["/usr/local/bin/python3.11"], ["-V"])[0] == sys.executable
    assert python_aware_argv(["sh", "-c", "python x"], []) == ["sh", "-c", "python x"]
    with pytest.raises(PodSpecError, match="neither command nor args"):
        python_aware_argv([], [])


@pytest.mark.parametrize(("policy", "code", "restart"), [
    ("Always", 0, True), ("Always", 1, True), ("OnFailure", 0, False), ("OnFailure", 2, True),
    ("Never", 0, False), ("Never", 1, False),
])
def test_restart_policy(policy, code, restart):
    assert should_restart(policy, code) is restart


def done(code: int) -> ContainerState:
    return ContainerState(name="c", state="terminated", exit_code=code, reason="Completed" if code == 0 else "Error")


def test_pod_phase_from_containers():
    running = ContainerState(name="c", state="running")
    creating = ContainerState(name="c")
    backing_off = ContainerState(name="c", state="waiting", reason="CrashLoopBackOff", will_restart=True, restart_count=1)
    assert pod_phase([creating], True, False) == "Pending"
    assert pod_phase([running], True, False) == "Running"
    assert pod_phase([backing_off], True, False) == "Running"
    assert pod_phase([done(0), done(0)], True, False) == "Succeeded"
    assert pod_phase([done(0), done(1)], True, False) == "Failed"
    assert pod_phase([done(0), running], True, False) == "Running"
    assert pod_phase([creating], False, False) == "Pending"
    assert pod_phase([creating], False, True) == "Failed"


def test_pod_status_is_ready_only_when_every_container_is():
    ready = ContainerState(name="a", state="running", ready=True, started_at="t", pid=10)
    unready = ContainerState(name="b", state="running", ready=False, started_at="t", pid=11)
    status = pod_status([ready, unready], pod_ip="127.0.0.9", host_ip="127.0.0.1", start_time="t",
                        init_done=True, init_failed=False)
    conditions = {c["type"]: c["status"] for c in status["conditions"]}
    assert status["phase"] == "Running" and status["podIP"] == "127.0.0.9"
    assert conditions["Ready"] == "False" and conditions["ContainersReady"] == "False"
    assert status["containerStatuses"][0]["containerID"] == "noria://10"
    unready.ready = True
    status = pod_status([ready, unready], pod_ip="127.0.0.9", host_ip="127.0.0.1", start_time="t",
                        init_done=True, init_failed=False)
    assert {c["type"]: c["status"] for c in status["conditions"]}["Ready"] == "True"


def test_termination_message_file_wins_and_logs_are_the_fallback_on_error():
    assert termination_message("summary", "FallbackToLogsOnError", 1, "log") == "summary"
    assert termination_message("", "FallbackToLogsOnError", 1, "a\nb\nTraceback: boom") == "a\nb\nTraceback: boom"
    assert termination_message("", "FallbackToLogsOnError", 0, "log") == ""
    assert termination_message("", "File", 1, "log") == ""
    assert len(termination_message("x" * 10000, "File", 0, "").encode()) == 4096


def test_scrape_targets_cover_named_ports_and_carry_pod_labels():
    [group] = scrape_targets(POD, "127.0.0.5")
    assert group["targets"] == ["127.0.0.5:8080"]
    labels = group["labels"]
    assert (labels["namespace"], labels["pod"], labels["container"]) == ("ml", "churn-v7-abc", "server")
    assert labels["label_noria_dev_version"] == "v7" and labels["label_app"] == "churn"


def test_scrape_annotation_adds_a_port_and_path():
    pod = {**POD, "metadata": {**POD["metadata"], "annotations": {
        "prometheus.io/scrape": "true", "prometheus.io/port": "9100", "prometheus.io/path": "/m"}}}
    targets = scrape_targets(pod, "127.0.0.5")
    assert [t["targets"] for t in targets] == [["127.0.0.5:8080"], ["127.0.0.5:9100"]]
    assert all(t["labels"]["__metrics_path__"] == "/m" for t in targets)


def test_label_names_are_sanitised_like_kubernetes_sd():
    assert sanitise_label("noria.dev/version") == "noria_dev_version"
    assert sanitise_label("app.kubernetes.io/name") == "app_kubernetes_io_name"

"""The test bed's Prometheus configuration: Kubernetes pod discovery relabelled as the chart's
PodMonitor (noria.scrape), the http_sd fallback labelling series alike, the configs accepted by the
built promtool, and which Prometheus the test bed picks.

The relabel rules are checked by applying them (``relabel`` below follows Prometheus' documented
semantics: anchored regex, ``;``-joined source labels, ``$1`` replacements, an empty result removes
the label) to the meta labels kubernetes_sd gives a pod, and to the targets the node agent publishes.
"""

from __future__ import annotations

import os
import re
import shutil
import stat
from pathlib import Path

import pytest
import yaml
from noria import scrape
from noria.contracts import LABEL_COMPONENT, LABEL_PIPELINE, LABEL_ROLLOUT, LABEL_VERSION
from noria_testbed import binaries
from noria_testbed.podspec import sanitise_label, scrape_targets
from noria_testbed.prometheus import check_config, http_sd_scrape_config, prometheus_config


def relabel(labels: dict[str, str], rules: list[dict]) -> dict[str, str] | None:
    """Prometheus' target relabelling, the actions the configs here use; None when the target is dropped."""
    labels = dict(labels)
    for rule in rules:
        action = rule.get("action", "replace")
        regex = re.compile(f"^(?:{rule.get('regex', '(.*)')})$")
        if action == "labeldrop":
            labels = {k: v for k, v in labels.items() if not regex.match(k)}
            continue
        value = ";".join(labels.get(name, "") for name in rule.get("source_labels", []))
        match = regex.match(value)
        if action == "keep" and not match:
            return None
        if action == "drop" and match:
            return None
        if action == "replace" and match:
            replacement = re.sub(r"\$\{?(\d+)\}?", r"\\g<\1>", rule.get("replacement", "$1"))
            result = match.expand(replacement)
            if result:
                labels[rule["target_label"]] = result
            else:
                labels.pop(rule["target_label"], None)
    return labels


def series_labels(target_labels: dict[str, str], job_name: str) -> dict[str, str]:
    """What a scraped series carries: the relabelled target's labels without the __ ones, plus job and instance."""
    out = {k: v for k, v in target_labels.items() if not k.startswith("__")}
    out.setdefault("job", job_name)
    out.setdefault("instance", target_labels["__address__"])
    return out


POD_LABELS = {LABEL_COMPONENT: "server", LABEL_ROLLOUT: "churn", LABEL_VERSION: "churn-v7",
              LABEL_PIPELINE: "churn", "app.kubernetes.io/managed-by": "noria"}


def pod(labels: dict[str, str] = POD_LABELS, port_name: str = "http", phase: str = "Running") -> dict:
    return {"metadata": {"name": "churn-v7-abc", "namespace": "ml", "uid": "u-1", "labels": dict(labels)},
            "spec": {"nodeName": "noria-local", "containers": [
                {"name": "server", "ports": [{"name": port_name, "containerPort": 8080}]}]},
            "status": {"phase": phase, "podIP": "127.0.0.5"}}


def kubernetes_sd_targets(p: dict) -> list[dict[str, str]]:
    """The meta labels kubernetes_sd (role pod) gives each declared container port of ``p``."""
    meta = p["metadata"]
    base = {"__meta_kubernetes_namespace": meta["namespace"], "__meta_kubernetes_pod_name": meta["name"],
            "__meta_kubernetes_pod_uid": meta["uid"], "__meta_kubernetes_pod_ip": p["status"]["podIP"],
            "__meta_kubernetes_pod_phase": p["status"]["phase"], "__meta_kubernetes_pod_ready": "true",
            "__meta_kubernetes_pod_node_name": p["spec"]["nodeName"]}
    for key, value in meta["labels"].items():
        base[f"__meta_kubernetes_pod_label_{sanitise_label(key)}"] = value
        base[f"__meta_kubernetes_pod_labelpresent_{sanitise_label(key)}"] = "true"
    return [{**base, "__address__": f"{p['status']['podIP']}:{port['containerPort']}",
             "__meta_kubernetes_pod_container_name": container["name"],
             "__meta_kubernetes_pod_container_port_name": port["name"],
             "__meta_kubernetes_pod_container_port_number": str(port["containerPort"]),
             "__meta_kubernetes_pod_container_port_protocol": "TCP"}
            for container in p["spec"]["containers"] for port in container["ports"]]


def kubernetes_sd_series(p: dict) -> list[dict[str, str]]:
    config = scrape.pod_scrape_config(kubeconfig_file="/k")
    kept = [relabel(t, config["relabel_configs"]) for t in kubernetes_sd_targets(p)]
    return [series_labels(t, config["job_name"]) for t in kept if t is not None]


def http_sd_series(p: dict) -> list[dict[str, str]]:
    config = http_sd_scrape_config("http://127.0.0.1:1/sd")
    out = []
    for group in scrape_targets(p, p["status"]["podIP"]):
        for address in group["targets"]:
            kept = relabel({**group["labels"], "__address__": address}, config["relabel_configs"])
            if kept is not None:
                out.append(series_labels(kept, config["job_name"]))
    return out


def test_a_model_server_pod_gets_the_podmonitor_labels():
    [labels] = kubernetes_sd_series(pod())
    assert labels == {
        "namespace": "ml", "pod": "churn-v7-abc", "container": "server", "endpoint": scrape.POD_PORT_NAME,
        "job": scrape.DEFAULT_POD_JOB, "instance": "127.0.0.5:8080",
        "noria_dev_component": "server", "noria_dev_rollout": "churn", "noria_dev_version": "churn-v7",
        "noria_dev_pipeline": "churn",
    }


def test_only_running_servers_and_routers_on_the_http_port_are_scraped():
    assert kubernetes_sd_series(pod({**POD_LABELS, LABEL_COMPONENT: "router"}))[0]["noria_dev_component"] == "router"
    assert kubernetes_sd_series(pod({**POD_LABELS, LABEL_COMPONENT: "trainer"})) == []
    assert kubernetes_sd_series(pod({k: v for k, v in POD_LABELS.items() if k != LABEL_COMPONENT})) == []
    assert kubernetes_sd_series(pod(port_name="metrics")) == []
    assert kubernetes_sd_series(pod(phase="Succeeded")) == []
    assert kubernetes_sd_series(pod(phase="Failed")) == []


def test_a_missing_pod_label_is_not_written_as_an_empty_series_label():
    [labels] = kubernetes_sd_series(pod({k: v for k, v in POD_LABELS.items() if k != LABEL_PIPELINE}))
    assert "noria_dev_pipeline" not in labels and labels["noria_dev_version"] == "churn-v7"


def test_every_pod_target_label_becomes_its_sanitised_series_label():
    rules = {r["target_label"]: r for r in scrape.pod_relabel_configs() if "target_label" in r}
    for label in scrape.POD_TARGET_LABELS:
        assert rules[scrape.series_label(label)]["source_labels"] == [
            f"__meta_kubernetes_pod_label_{sanitise_label(label)}"]
    assert scrape.series_label("noria.dev/component") == "noria_dev_component"


def test_the_http_sd_fallback_labels_series_as_kubernetes_discovery_does():
    for p in (pod(), pod({**POD_LABELS, LABEL_COMPONENT: "router"}),
              pod({k: v for k, v in POD_LABELS.items() if k != LABEL_PIPELINE})):
        assert http_sd_series(p) == kubernetes_sd_series(p)
    for p in (pod({**POD_LABELS, LABEL_COMPONENT: "trainer"}), pod(port_name="metrics")):
        assert http_sd_series(p) == []


def test_config_needs_exactly_one_way_to_find_pods():
    with pytest.raises(ValueError, match="exactly one"):
        prometheus_config()
    with pytest.raises(ValueError, match="exactly one"):
        prometheus_config(kubeconfig_file="/k", sd_url="http://x/sd")


def test_static_jobs_sit_beside_the_pod_job():
    config = prometheus_config(kubeconfig_file="/k", static_jobs={"noria-operator": ["127.0.0.1:9"]})
    assert [j["job_name"] for j in config["scrape_configs"]] == [scrape.DEFAULT_POD_JOB, "noria-operator"]
    assert config["scrape_configs"][0]["kubernetes_sd_configs"] == [{"role": "pod", "kubeconfig_file": "/k"}]
    assert config["global"]["scrape_interval"] == "1s"


# ---- promtool: the built one must accept both configurations ---------------------------------------
@pytest.fixture(scope="module")
def built() -> binaries.PrometheusBinaries:
    try:
        found = binaries._built_prometheus()
    except binaries.PrometheusUnavailable as error:
        if os.environ.get("CI"):
            pytest.fail(f"built Prometheus unavailable under CI: {error}")
        pytest.skip(f"built Prometheus unavailable (run `make prometheus`): {error}")
    return found


def _write(tmp_path: Path, config: dict) -> Path:
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "c",
        "clusters": [{"name": "c", "cluster": {"server": "https://127.0.0.1:6443"}}],
        "users": [{"name": "u", "user": {"token": "t"}}],
        "contexts": [{"name": "c", "context": {"cluster": "c", "user": "u"}}]}))
    path = tmp_path / "prometheus.yml"
    path.write_text(yaml.safe_dump(config, sort_keys=False).replace("KUBECONFIG", str(kubeconfig)))
    return path


def _promtool_check(promtool: Path, path: Path) -> str:
    result = check_config(path, promtool)
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout + result.stderr


def test_built_promtool_accepts_the_kubernetes_sd_config(built, tmp_path):
    path = _write(tmp_path, prometheus_config(kubeconfig_file="KUBECONFIG", static_jobs={"op": ["127.0.0.1:9"]}))
    _promtool_check(built.promtool, path)


def test_built_promtool_accepts_the_http_sd_fallback_config(built, tmp_path):
    _promtool_check(built.promtool, _write(tmp_path, prometheus_config(sd_url="http://127.0.0.1:1/sd")))


def test_built_promtool_refuses_a_broken_relabel_rule(built, tmp_path):
    config = prometheus_config(kubeconfig_file="KUBECONFIG")
    config["scrape_configs"][0]["relabel_configs"].append({"action": "keep", "regex": "(unclosed"})
    assert check_config(_write(tmp_path, config), built.promtool).returncode != 0


def test_built_prometheus_reports_its_kubernetes_only_build(built):
    import subprocess

    out = subprocess.run([str(built.prometheus), "--version"], capture_output=True, text=True).stdout
    assert "version 3." in out and "enable_kubernetes_sd" in out


# ---- which Prometheus the test bed runs ----------------------------------------------------------
def _fake_tools(directory: Path) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    for name in ("prometheus", "promtool"):
        tool = directory / name
        tool.write_text("#!/bin/sh\nexit 0\n")
        tool.chmod(tool.stat().st_mode | stat.S_IXUSR)
    return directory


@pytest.fixture
def choose(monkeypatch, tmp_path):
    def find(choice: str | None, *, built_dir: Path | None, path_dir: Path | None) -> binaries.PrometheusBinaries:
        binaries._find_prometheus.cache_clear()
        if choice is None:
            monkeypatch.delenv(binaries.PROMETHEUS_CHOICE_ENV, raising=False)
        else:
            monkeypatch.setenv(binaries.PROMETHEUS_CHOICE_ENV, choice)
        if built_dir is not None:
            monkeypatch.setenv("PROMETHEUS_BINARY", str(built_dir / "prometheus"))
        else:  # the build script fails at once: its cache root is a regular file, so nothing is cached or built
            monkeypatch.delenv("PROMETHEUS_BINARY", raising=False)
            blocker = tmp_path / "not-a-directory"
            blocker.write_text("")
            monkeypatch.setenv("NORIA_CACHE", str(blocker))
        # PATH: the given directory and only the commands the build script needs, never the real tools.
        shims = tmp_path / "shims"
        shims.mkdir(exist_ok=True)
        for command in ("bash", "dirname", "mkdir"):
            if not (shims / command).exists():
                (shims / command).symlink_to(shutil.which(command))
        monkeypatch.setenv("PATH", f"{path_dir or tmp_path / 'empty'}:{shims}")
        return binaries.find_prometheus()

    yield find
    binaries._find_prometheus.cache_clear()


def test_the_built_prometheus_is_preferred(choose, tmp_path):
    found = choose(None, built_dir=_fake_tools(tmp_path / "built"), path_dir=_fake_tools(tmp_path / "deb"))
    assert found.kubernetes_sd and found.prometheus == tmp_path / "built" / "prometheus"


def test_debian_is_the_fallback_and_can_be_forced(choose, tmp_path):
    deb = _fake_tools(tmp_path / "deb")
    forced = choose("debian", built_dir=_fake_tools(tmp_path / "built"), path_dir=deb)
    assert not forced.kubernetes_sd and forced.prometheus == deb / "prometheus"
    assert "NORIA_TESTBED_PROMETHEUS=debian" in forced.origin
    fallback = choose(None, built_dir=None, path_dir=deb)
    assert not fallback.kubernetes_sd and "the built one is unavailable" in fallback.origin


def test_built_can_be_insisted_on_and_bad_choices_are_named(choose, tmp_path):
    with pytest.raises(binaries.PrometheusUnavailable, match="NORIA_TESTBED_PROMETHEUS='newest'"):
        choose("newest", built_dir=None, path_dir=None)
    with pytest.raises(binaries.PrometheusUnavailable, match="build-prometheus.sh failed"):
        choose("built", built_dir=None, path_dir=_fake_tools(tmp_path / "deb"))
    with pytest.raises(binaries.PrometheusUnavailable, match="make prometheus"):
        choose("debian", built_dir=None, path_dir=None)

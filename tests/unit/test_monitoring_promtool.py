"""The alert rules under the real promtool: ``promtool check rules`` and ``promtool test rules`` on
the generated rule and test files (every alert, firing and not firing), and the dashboard's accuracy
and F1 PromQL evaluated by Prometheus' engine against ``noria.scoring`` on the same counts.

promtool: the one hack/build-prometheus.sh builds from the Go module (Prometheus 3.x, cached), and
Debian's 2.42 too when it is on PATH; the rules must work on both.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from noria import metrics as m
from noria import monitoring, scoring
from noria.monitoring import alert_tests, alerts, promql
from noria_testbed import binaries

ROOT = Path(__file__).resolve().parents[2]
FILES = ROOT / monitoring.CHART_FILES


def _promtools() -> list[Path]:
    tools = [binaries._built_prometheus().promtool]  # PrometheusUnavailable (an error, never a skip) says why not
    debian = shutil.which("promtool")
    if debian and Path(debian).resolve() != tools[0].resolve():
        tools.append(Path(debian))
    return tools


@pytest.fixture(scope="module")
def promtools() -> list[Path]:
    return _promtools()


def _run(promtool: Path, *args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(promtool), *args], capture_output=True, text=True, cwd=cwd)


def test_promtool_accepts_the_rules(promtools: list[Path]) -> None:
    for promtool in promtools:
        run = _run(promtool, "check", "rules", alert_tests.RULES_FILE, cwd=FILES)
        assert run.returncode == 0, f"{promtool}:\n{run.stdout}\n{run.stderr}"
        assert f"{len(alerts.ALERTS)} rules found" in run.stdout


def test_every_alert_fires_and_stays_quiet_as_its_promtool_tests_say(promtools: list[Path]) -> None:
    for promtool in promtools:
        run = _run(promtool, "test", "rules", "alerts_test.yaml", cwd=FILES)
        assert run.returncode == 0, f"{promtool}:\n{run.stdout}\n{run.stderr}"


def test_every_alert_has_a_case_where_it_fires_and_one_where_it_does_not() -> None:
    for alert in alerts.ALERTS:
        cases = alert_tests.CASES[alert.name]
        assert any(case.fires for case in cases), alert.name
        quiet = [case for case in cases if not case.fires]
        # Or a firing case in which some other object's series are present but do not fire.
        assert quiet or any(len(case.series) > len(case.fires) for case in cases), alert.name


def test_promtool_catches_a_broken_expectation(promtools: list[Path], tmp_path: Path) -> None:
    """The promtool tests can fail: the same file with one expected label changed does."""
    data = alert_tests.promtool_tests()
    first = next(t for t in data["tests"] if t["alert_rule_test"][0]["exp_alerts"])
    first["alert_rule_test"][0]["exp_alerts"][0]["exp_labels"]["namespace"] = "elsewhere"
    shutil.copy(FILES / alert_tests.RULES_FILE, tmp_path / alert_tests.RULES_FILE)
    (tmp_path / "broken_test.yaml").write_text(yaml.safe_dump(data, sort_keys=False))
    for promtool in promtools:
        run = _run(promtool, "test", "rules", "broken_test.yaml", cwd=tmp_path)
        assert run.returncode != 0 and "FAILED" in (run.stdout + run.stderr), promtool


# Feedback counts per (version, actual, predicted) per minute. v1: three classes, "maybe" declared
# (its zero series exists). v2: "maybe" only ever predicted, so no (maybe, maybe) series at all: its F1
# is 0 and still counts in the macro average, as in noria.scoring.
CONFUSION = {
    ("churn-v1", "yes", "yes"): 7, ("churn-v1", "yes", "no"): 3, ("churn-v1", "no", "no"): 11,
    ("churn-v1", "no", "yes"): 2, ("churn-v1", "no", "maybe"): 1, ("churn-v1", "maybe", "maybe"): 0,
    ("churn-v2", "yes", "yes"): 5, ("churn-v2", "no", "no"): 5, ("churn-v2", "no", "yes"): 5,
    ("churn-v2", "no", "maybe"): 2,
}


def _expected(version: str, score) -> float:  # noqa: ANN001
    counts = {(a, p): float(n) for (v, a, p), n in CONFUSION.items() if v == version}
    return float(score(counts))


@pytest.mark.parametrize("name, build, score", [
    ("accuracy", promql.accuracy, scoring.accuracy),
    ("macro_f1", promql.macro_f1, scoring.macro_f1),
])
def test_dashboard_scores_equal_noria_scoring(promtools: list[Path], tmp_path: Path, name, build, score) -> None:  # noqa: ANN001
    series = []
    for (version, actual, predicted), per_minute in CONFUSION.items():
        labels = (f'namespace="ml", pod="p-{version}", model="churn", version="{version}", '
                  f'actual="{actual}", predicted="{predicted}"')
        series.append({"series": f"{m.FEEDBACK_TOTAL}{{{labels}}}", "values": f"0+{per_minute}x20"})
    for version in ("churn-v1", "churn-v2"):
        series.append({"series": f'expected{{version="{version}"}}',
                       "values": " ".join([repr(_expected(version, score))] * 21)})
    expr = build('{namespace="ml", model="churn"}', "5m", ("version",))
    check = f"abs(({expr}) - on (version) expected) < bool 1e-9"
    test = {"rule_files": [], "evaluation_interval": "1m", "tests": [{
        "interval": "1m", "input_series": series,
        "promql_expr_test": [{"expr": check, "eval_time": "15m", "exp_samples": [
            {"labels": f'{{version="{v}"}}', "value": 1} for v in ("churn-v1", "churn-v2")]}],
    }]}
    (tmp_path / "scores_test.yaml").write_text(yaml.safe_dump(test, sort_keys=False))
    for promtool in promtools:
        run = _run(promtool, "test", "rules", "scores_test.yaml", cwd=tmp_path)
        assert run.returncode == 0, f"{name} under {promtool}:\n{run.stdout}\n{run.stderr}\n{expr}"

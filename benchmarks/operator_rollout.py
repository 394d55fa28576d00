"""Cost of the Rollout decision, the part of every reconcile pass that grows with the number of
ModelVersions and Deployments: ``python benchmarks/operator_rollout.py [--versions N] [--rounds R]``.

Prints the median time of ``decide()`` (plus ``analysis_due``) for a canary mid-rollout whose namespace
holds N ModelVersions and N/10 replaced Deployments, and the implied passes per second on one core.
End-to-end figures (Approved → first canary answer, abort → traffic back on stable, failed requests
during a blue-green switch or an abort) come from the integration tests, which print ``FIGURE`` lines:
``.venv/bin/python -m pytest -s tests/integration/test_rollout_*.py | grep FIGURE``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import statistics
import time

from noria import conditions as c
from noria.deployment.decide import Observation, VersionPods, analysis_due, decide
from noria.deployment.objects import RolloutRef
from noria.deployment.spec import parse_rollout_spec

SPEC = {"source": {"pipeline": "churn"}, "replicas": 3,
        "analysis": {"interval": "30s", "checks": [{"builtin": "errorRate", "max": "0.01"},
                                                   {"builtin": "latencyP99", "max": "250ms"}]},
        "strategy": {"canary": {"steps": [{"setWeight": 10}, {"pause": {"duration": "5m"}}, {"setWeight": 50},
                                          {"pause": {}}]}}}


def observation(n_versions: int) -> Observation:
    now = dt.datetime(2026, 11, 23, 12, tzinfo=dt.UTC)
    mvs = {f"churn-v{i}": {"metadata": {"name": f"churn-v{i}"}, "spec": {"pipeline": "churn", "version": i},
                           "status": {"stage": "Retired"}} for i in range(1, n_versions + 1)}
    stable, cand = f"churn-v{n_versions - 1}", f"churn-v{n_versions}"
    mvs[stable]["status"]["stage"], mvs[cand]["status"]["stage"] = "Production", "Canary"
    pods = {v: VersionPods(v, 3, 3, True, now + dt.timedelta(minutes=5)) for v in list(mvs)[-n_versions // 10 - 2:]}
    pods[stable] = VersionPods(stable, 3, 3)
    pods[cand] = VersionPods(cand, 3, 3)
    status = {"stableVersion": stable, "canaryVersion": cand, "currentStep": 1, "canaryWeight": 10,
              "stepStartedAt": c.now_iso(now - dt.timedelta(minutes=1)), "weights": {stable: 90, cand: 10},
              "conditions": [], "analysis": {"passed": 2, "last": {"at": c.now_iso(now)}}}
    return Observation(RolloutRef("churn", "ml", "u"), 1, parse_rollout_spec(SPEC), None, status, mvs, pods, now)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--versions", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=2000)
    args = parser.parse_args()
    obs = observation(args.versions)
    for _ in range(50):
        decide(obs)
    samples = []
    for _ in range(args.rounds):
        t0 = time.perf_counter()
        analysis_due(obs)
        decide(obs)
        samples.append(time.perf_counter() - t0)
    median = statistics.median(samples)
    p99 = sorted(samples)[int(0.99 * len(samples)) - 1]
    print(f"decide() with {args.versions} ModelVersions: median {median * 1e6:.0f} us, p99 {p99 * 1e6:.0f} us, "
          f"{1 / median:,.0f} passes/s on one core")


if __name__ == "__main__":
    main()

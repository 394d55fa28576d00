"""``python -m noria_testbed.demo`` (``make demo``): the closed loop, told as it happens.

Starts the local test bed (control plane, node agent, Prometheus), the Noria operator, applies
``examples/90-closed-loop`` and runs the story (see ``story.py``). Prints ``kubectl get tp,mv,mro``,
the timeline of what Noria did and why, the accuracy figures, the checks, and the report's path.
Exit code 0 only if every check of the story held.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import os
import sys
import time
from pathlib import Path

from noria_testbed.binaries import REPO_ROOT


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m noria_testbed.demo", description=__doc__.split("\n")[0])
    parser.add_argument("--out", help="output folder (default: out/demo-<UTC timestamp>)")
    parser.add_argument("--rate", type=float, default=20.0, help="prediction requests per second (default 20)")
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args(argv)

    # One OpenMP thread per process: the pods are local processes sharing a few cores, and OpenMP's
    # spin-waiting threads slow everything down when oversubscribed (the node agent passes OMP_*).
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    from noria_testbed.demo.story import DemoConfig, Story
    from noria_testbed.testbed import LocalTestbed

    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%d-%H%M%S")
    out = (Path(args.out) if args.out else REPO_ROOT / "out" / f"demo-{stamp}").resolve()
    out.mkdir(parents=True, exist_ok=True)
    print(f"Noria closed-loop demo — output in {out}", flush=True)
    began = time.monotonic()
    print("starting the local test bed (control plane, node agent, Prometheus) ...", flush=True)
    testbed = LocalTestbed(out / "testbed", prometheus=True)
    try:
        testbed.start()
        print("test bed up: " + ", ".join(f"{k} {v:.1f}s" for k, v in testbed.timings.items())
              + f"; export KUBECONFIG={testbed.kubeconfig}", flush=True)
        story = Story(testbed, DemoConfig(out_dir=out, rate=args.rate, seed=args.seed))
        result = asyncio.run(story.run())
    finally:
        testbed.stop()
    wall = time.monotonic() - began

    print("\n$ kubectl get tp,mv,mro -n noria-demo")
    print(result.kubectl_get.rstrip())
    print("\nWhat Noria did, and why:")
    origin = result.events[0].ts if result.events else 0.0
    for event in result.events:
        print(f"  {event.when(origin)}  {event.source:<28} {event.what:<34} {event.reason}"[:220])
    if result.facts is not None:
        f = result.facts.figures

        def fmt(key: str) -> str:
            value = f.get(key)
            return f"{value:.3f}" if isinstance(value, float) else "n/a"

        print("\nAccuracy of the answers users got (scored with their later ground truth):")
        print(f"  before the drift ({result.facts.v1}):          {fmt('accuracy_before_drift')}  "
              f"(F1 {fmt('f1_before_drift')})")
        print(f"  after the drift, still {result.facts.v1}:      {fmt('accuracy_after_drift_v1')}  "
              f"(F1 {fmt('f1_after_drift_v1')})")
        print(f"  after recovery ({result.facts.v2}):            {fmt('accuracy_after_recovery')}  "
              f"(F1 {fmt('f1_after_recovery')})")
        print(f"  counterfactual, {result.facts.v1} kept serving: {fmt('counterfactual_v1_after_recovery')}")
        for key, label in (("drift_to_retrain_start_s", "from drift injection to the retraining run"),
                           ("drift_to_v2_full_s", f"from drift injection to {result.facts.v2} at 100%")):
            value = f.get(key)
            print(f"  {label}: {f'{value:.0f}s' if isinstance(value, float) else 'n/a'}")
    print("\nChecks:")
    for check in result.checks:
        print(f"  {'PASS' if check.ok else 'FAIL'}  {check.name}\n        {check.detail}"[:400])
    if result.error:
        print(f"\nThe story did not finish: {result.error}")
    print(f"\nwall time {wall:.0f}s; report: {result.report or '(none)'}; timeline: {result.timeline}")
    print("ALL CHECKS HELD" if result.ok else "SOME CHECKS FAILED", flush=True)
    return 0 if result.ok else 1


if __name__ == "__main__":
    sys.exit(main())

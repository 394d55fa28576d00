"""``python -m noria.backtest.evaluate``: the synthetic scenarios through ``noria backtest``.

For each scenario (``noria.backtest.scenarios``): the scenario pipeline with the default trigger
settings and with the recommended settings, each replayed with its two baselines (never retrain,
retrain every 10 000 rows: same spec, no triggers). Prints a Markdown table (the one in
docs/backtest.md) and writes each replay's record and plot under ``--out``.

The goal the table is read against: at least the periodic baseline's served accuracy with at most a
third of its retraining runs (runs after the initial one).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from . import scenarios as S
from .cli import backtest, write_outputs
from .clock import parse_slice

PERIODIC_ROWS = 10_000
SLICE = "1000rows"


def evaluate(name: str, seed: int, out: Path, workdir: Path, rows: int | None = None) -> dict[str, Any]:
    history, traffic = S.generate(name, seed, rows)
    size = parse_slice(SLICE)
    began = time.monotonic()
    row: dict[str, Any] = {"scenario": name, "rows": len(traffic)}
    for key, manifest in (("defaults", S.pipeline(name, S.DEFAULT_TRIGGERS)), ("recommended", S.recommended(name))):
        record = backtest(manifest, history, traffic, size, PERIODIC_ROWS, workdir / key)
        spec, never, periodic = (p["summary"] for p in record["policies"].values())
        row[key] = {"spec": spec, "never": never, "periodic": periodic}
        write_outputs(record, out / name / key)
    row["seconds"] = round(time.monotonic() - began, 1)
    return row


def _cell(summary: dict[str, Any]) -> str:
    return f"{summary['served']:.4f} ({summary['retrains']})"


def goal(candidate: dict[str, Any], periodic: dict[str, Any]) -> str:
    """``yes`` when the candidate served at least the periodic accuracy with at most a third of its
    retrains; else what is missing."""
    misses = []
    if candidate["served"] < periodic["served"]:
        misses.append(f"{candidate['served'] - periodic['served']:+.4f}")
    if candidate["retrains"] * 3 > periodic["retrains"]:
        misses.append(f"{candidate['retrains']} > {periodic['retrains']}/3 retrains")
    return "yes" if not misses else "no: " + ", ".join(misses)


def table(rows: list[dict[str, Any]]) -> str:
    """Two specs per scenario, each with its own baselines (the baselines keep the spec's data
    window, feedback and gate, and drop its triggers: see docs/backtest.md)."""
    lines = [
        "| scenario | spec | never retrain | every 10k rows | Noria | goal met? |",
        "|---|---|---:|---:|---:|---|",
    ]
    for r in rows:
        for key in ("defaults", "recommended"):
            c = r[key]
            lines.append(f"| {r['scenario']} | {key} | {_cell(c['never'])} | {_cell(c['periodic'])} | "
                         f"{_cell(c['spec'])} | {goal(c['spec'], c['periodic'])} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m noria.backtest.evaluate", description=__doc__.split("\n\n")[0])
    parser.add_argument("--scenarios", default=",".join(S.SCENARIOS),
                        help=f"comma-separated subset of {', '.join(S.SCENARIOS)}")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=None, help="records and plots (default ./backtest-eval-<time>)")
    args = parser.parse_args(argv)
    names = [n.strip() for n in args.scenarios.split(",") if n.strip()]
    unknown = [n for n in names if n not in S.SCENARIOS]
    if unknown:
        print(f"unknown scenario(s) {', '.join(unknown)}; choose from {', '.join(S.SCENARIOS)}", file=sys.stderr)
        return 2
    out = Path(args.out or f"backtest-eval-{dt.datetime.now(dt.UTC).strftime('%Y%m%d-%H%M%S')}")
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    with tempfile.TemporaryDirectory(prefix="noria-eval-") as tmp:
        for name in names:
            row = evaluate(name, args.seed, out, Path(tmp) / name)
            rows.append(row)
            print(f"{name}: {row['seconds']}s", file=sys.stderr, flush=True)
            for key in ("defaults", "recommended"):
                for policy, s in row[key].items():
                    print(f"  {key:<12} {policy:<9} served {s['metric']} {s['served']}  runs {s['runs']} "
                          f"(retrains {s['retrains']}: {s['byTrigger']}, rejected {s['rejected']})", file=sys.stderr)
    text = table(rows)
    (out / "evaluation.json").write_text(json.dumps(rows, indent=1) + "\n")
    (out / "evaluation.md").write_text(text + "\n")
    print(text)
    print("\nCells: served accuracy over all traffic (retraining runs after the initial one).")
    return 0


if __name__ == "__main__":
    sys.exit(main())


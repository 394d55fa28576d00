"""Synthetic drift scenarios for the backtest, written here (no literature data set is copied).

Each scenario is a deterministic function of a seed: a history of ``HISTORY_ROWS`` labelled rows
(the store when the pipeline is applied) and a stream of production traffic, one row per second,
whose labels come back through feedback. Two worlds exist, each a pair (input distribution,
concept = the label's dependence on the inputs):

- world A: five standard-normal inputs and a three-valued ``segment``; the label follows a
  logistic model of them;
- world B: shifted inputs (``x0`` up, ``x4`` down, ``x2`` wider, another segment mix) and a
  different concept (``x0``'s and ``x1``'s effects reversed, ``x4`` matters, ``x3`` does not).

Both concepts are learnable to about the same accuracy (~0.87 with the scenario estimator), so a
model retrained after a change can be as good as the first one was before it. The concepts are
linear in the inputs so that a logistic regression learns them: it trains in milliseconds, which
keeps a whole evaluation (about thirty runs per scenario) within minutes on two busy cores.

The scenarios, 100k rows of traffic each (so that retraining every 10k rows is ten runs, as in the
issue's measurements): ``noise`` (world A throughout: nothing should retrain), ``abrupt`` (A, then
B from row 50k), ``gradual`` (rows come from B with a probability rising from 0 to 1 between rows
30k and 70k), ``recurring`` (A, then B from 35k, then A again from 70k), ``covariate`` (inputs of
B, concept of A, from 50k: the inputs move, the right answers do not), ``label`` (inputs of A,
concept of B, from 50k: only the feedback can tell).
"""

from __future__ import annotations

import copy
import datetime as dt
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final

import numpy as np
import pandas as pd

from noria.contracts import API_VERSION

TIMESTAMP: Final = "ts"
TARGET: Final = "y"
NUMERIC: Final = ("x0", "x1", "x2", "x3", "x4")
CATEGORICAL: Final = ("segment",)
FEATURES: Final = NUMERIC + CATEGORICAL
SEGMENTS: Final = ("a", "b", "c")
HISTORY_ROWS: Final = 10_000
START: Final = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
SHARPNESS: Final = 3.0  # how deterministic labels are: higher = closer to the concept's sign


def _inputs(n: int, world_b: np.ndarray, rng: np.random.Generator) -> pd.DataFrame:
    """Inputs of ``n`` rows; row i from world B where ``world_b[i]``."""
    x = rng.standard_normal((n, len(NUMERIC)))
    x[:, 0] += np.where(world_b, 1.0, 0.0)
    x[:, 4] += np.where(world_b, -0.8, 0.0)
    x[:, 2] *= np.where(world_b, 1.5, 1.0)
    u = rng.random(n)
    seg_a = np.where(u < 0.5, "a", np.where(u < 0.8, "b", "c"))
    seg_b = np.where(u < 0.2, "a", np.where(u < 0.5, "b", "c"))
    frame = pd.DataFrame(x, columns=list(NUMERIC)).round(4)
    frame["segment"] = np.where(world_b, seg_b, seg_a)
    return frame


def _logit(frame: pd.DataFrame, concept_b: np.ndarray) -> np.ndarray:
    x = {c: frame[c].to_numpy(float) for c in NUMERIC}
    seg = frame["segment"].to_numpy()
    a = 1.6 * x["x0"] - 1.2 * x["x1"] + 0.8 * x["x2"] - 0.6 * x["x3"] + 0.7 * (seg == "a") - 0.5 * (seg == "c")
    b = -1.4 * (x["x0"] - 1.0) + 1.0 * (x["x4"] + 0.8) + 1.2 * x["x1"] - 0.5 * x["x2"] + 0.6 * (seg == "c") - 0.3
    return np.where(concept_b, b, a)


def _labels(frame: pd.DataFrame, concept_b: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    p = 1.0 / (1.0 + np.exp(-SHARPNESS * _logit(frame, concept_b)))
    return (rng.random(len(frame)) < p).astype(np.int64)


def _frame(n: int, inputs_b: np.ndarray, concept_b: np.ndarray, first_second: int,
           rng: np.random.Generator) -> pd.DataFrame:
    frame = _inputs(n, inputs_b, rng)
    frame[TARGET] = _labels(frame, concept_b, rng)
    seconds = first_second + np.arange(n)
    frame.insert(0, TIMESTAMP, pd.to_datetime(START) + pd.to_timedelta(seconds, unit="s"))
    return frame


@dataclass(frozen=True)
class Scenario:
    name: str
    rows: int
    description: str
    # (row index of the traffic, rng) -> (inputs from world B?, concept B?) per row
    worlds: Callable[[np.ndarray, np.random.Generator], tuple[np.ndarray, np.ndarray]]


def _after(at: int) -> Callable[[np.ndarray, np.random.Generator], tuple[np.ndarray, np.ndarray]]:
    return lambda i, _rng: (i >= at, i >= at)


def _gradual(begin: int, end: int) -> Callable[[np.ndarray, np.random.Generator], tuple[np.ndarray, np.ndarray]]:
    def worlds(i: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        share = np.clip((i - begin) / float(end - begin), 0.0, 1.0)
        b = rng.random(len(i)) < share
        return b, b
    return worlds


def _blocks(*starts: int) -> Callable[[np.ndarray, np.random.Generator], tuple[np.ndarray, np.ndarray]]:
    """World B in every other block, the blocks starting at ``starts`` (A first)."""
    def worlds(i: np.ndarray, _rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        b = np.searchsorted(np.asarray(starts), i, side="right") % 2 == 1
        return b, b
    return worlds


ROWS: Final = 100_000
SCENARIOS: Final[dict[str, Scenario]] = {s.name: s for s in (
    Scenario("noise", ROWS, "stationary: world A throughout (no drift at all)",
             lambda i, _rng: (np.zeros(len(i), bool), np.zeros(len(i), bool))),
    Scenario("abrupt", ROWS, "inputs and concept switch from A to B at row 50k", _after(50_000)),
    Scenario("gradual", ROWS, "rows come from B with a probability rising 0 -> 1 over rows 30k-70k",
             _gradual(30_000, 70_000)),
    Scenario("recurring", ROWS, "A, then B from row 35k, then A again from row 70k", _blocks(35_000, 70_000)),
    Scenario("covariate", ROWS, "inputs move to B's at row 50k; the concept stays A's",
             lambda i, _rng: (i >= 50_000, np.zeros(len(i), bool))),
    Scenario("label", ROWS, "the concept switches to B's at row 50k; the inputs stay A's",
             lambda i, _rng: (np.zeros(len(i), bool), i >= 50_000)),
)}


def generate(name: str, seed: int = 0, rows: int | None = None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """``(history, traffic)`` of scenario ``name``: history from world A, the ``HISTORY_ROWS``
    seconds before the traffic starts at ``START``; ``rows`` shortens the traffic (tests)."""
    if name not in SCENARIOS:
        raise ValueError(f"unknown scenario {name!r}; choose from {', '.join(SCENARIOS)}")
    scenario = SCENARIOS[name]
    rng = np.random.default_rng([seed, sorted(SCENARIOS).index(name)])
    none = np.zeros(HISTORY_ROWS, bool)
    history = _frame(HISTORY_ROWS, none, none, -HISTORY_ROWS, rng)
    n = scenario.rows if rows is None else rows
    index = np.arange(n)
    inputs_b, concept_b = scenario.worlds(index, rng)
    traffic = _frame(n, inputs_b, concept_b, 0, rng)
    return history, traffic


# --- the pipelines replayed over the scenarios -------------------------------------------------
BASE_SPEC: Final[dict[str, Any]] = {
    "model": {"task": "classification", "estimator": "sklearn.linear_model.LogisticRegression",
              # fast: the evaluation trains ~30 models per scenario on two busy cores
              "params": {"C": 1.0, "max_iter": 300},
              "target": TARGET, "features": list(FEATURES)},
    "data": {"source": "file:///replaced/by/the/backtest/", "format": "parquet", "timestampColumn": TIMESTAMP,
             "window": {"last": "10000 rows"}, "feedback": {"enabled": True}},
    "validation": {"minRows": 500, "schema": "lenient"},
    "evaluation": {"metric": "accuracy", "holdoutFraction": "0.2"},
}

# Triggers with every optional field left at its default: the drift effect size the docs use and
# the relative performance form (a drop of 5 points from the version's own live level).
DEFAULT_TRIGGERS: Final[dict[str, Any]] = {
    "drift": {"threshold": "0.2"},
    "performance": {"metric": "accuracy", "dropBy": "0.05"},
}

# The training window recommended in docs/backtest.md: the gate picks, per run, the candidate whose
# model scores best on the newest rows, so a run soon after a change can learn from the new rows only.
RECOMMENDED_WINDOW: Final[dict[str, Any]] = {"candidates": ["3000 rows", "10000 rows"]}

# The triggers recommended in docs/backtest.md (chosen on these scenarios: read its figures with
# that in mind). Drift must hold for 30 minutes (two passes of evidence, not one window); the
# performance trigger follows each version's own level (a world whose achievable accuracy changes
# has no right absolute floor) and needs 500 labels; a 2h cooldown lets the window fill with the
# new world before the next run is judged.
RECOMMENDED_TRIGGERS: Final[dict[str, Any]] = {
    "drift": {"threshold": "0.2", "for": "30m"},
    "performance": {"metric": "accuracy", "dropBy": "0.10", "for": "30m", "minLabels": 500},
    "cooldown": "2h",
}


def pipeline(name: str, triggers: dict[str, Any]) -> dict[str, Any]:
    return {"apiVersion": API_VERSION, "kind": "TrainingPipeline",
            "metadata": {"name": name},
            "spec": {**copy.deepcopy(BASE_SPEC), "triggers": copy.deepcopy(triggers)}}


def recommended(name: str) -> dict[str, Any]:
    """The scenario pipeline with the recommended triggers and training window."""
    manifest = pipeline(name, RECOMMENDED_TRIGGERS)
    manifest["spec"]["data"]["window"] = copy.deepcopy(RECOMMENDED_WINDOW)
    return manifest


def main(argv: list[str] | None = None) -> int:
    """``python -m noria.backtest.scenarios NAME --out DIR``: write a scenario as files to try the
    command on: ``history.parquet`` (--data), ``traffic.parquet`` (--feedback) and the defaults'
    ``pipeline.yaml`` (``recommended.yaml`` beside it)."""
    import argparse
    from pathlib import Path

    import yaml

    parser = argparse.ArgumentParser(prog="python -m noria.backtest.scenarios", description=main.__doc__)
    parser.add_argument("name", choices=sorted(SCENARIOS))
    parser.add_argument("--out", required=True, help="folder for the files")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    history, traffic = generate(args.name, args.seed)
    history.to_parquet(out / "history.parquet", index=False)
    traffic.to_parquet(out / "traffic.parquet", index=False)
    (out / "pipeline.yaml").write_text(yaml.safe_dump(pipeline(args.name, DEFAULT_TRIGGERS), sort_keys=False))
    (out / "recommended.yaml").write_text(yaml.safe_dump(recommended(args.name), sort_keys=False))
    print(f"python -m noria backtest {out / 'pipeline.yaml'} --data {out / 'history.parquet'} "
          f"--feedback {out / 'traffic.parquet'} --out {out / 'result'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

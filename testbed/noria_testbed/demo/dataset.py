"""The demo's world: a telecom customer-churn dataset, generated, time-stamped, and able to drift.

Why generated: the closed loop must be shown on data whose drift we control and can explain.
Two kinds of change are modelled separately, because Noria has to notice both:

- *covariate drift* (the inputs move): a price rise lifts ``monthly_charges``, a new unlimited-data
  plan doubles ``data_usage_gb``, more customers sign month-to-month contracts and pay by
  electronic cheque, and the customer base gets younger. The live input distributions move away
  from the model's reference profile, which is what the drift trigger measures.
- *concept drift* (the relationship moves): a competitor launches a cheap data-heavy plan, so heavy
  data users and price-sensitive customers leave, while support calls matter less than before. The
  same customer now churns for other reasons; a model trained before the change is wrong in a way
  no input statistic shows, which is what the feedback (F1/accuracy) trigger measures.

``shift`` (covariate) and ``concept`` both go from 0 (the reference world) to 1 (fully changed) so a
story can move gradually. Labels are drawn from a logistic model of the features with noise, and
both worlds are learnable to about the same accuracy (a model trained on 4000 rows scores ~0.88
on the reference world and ~0.89 on the changed one, whose main drivers are a little sharper), so a
model retrained on the new world can be as accurate after the change as the first was before it,
while the first model drops to ~0.56 on the changed world.

Everything here is a pure function of its arguments (and a seeded ``numpy.random.Generator``),
except ``write_partition`` which writes one Parquet file atomically.
"""

from __future__ import annotations

import datetime as dt
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import numpy as np
import pandas as pd

TARGET: Final = "churned"
TIMESTAMP: Final = "event_time"
ID: Final = "customer_id"
NUMERIC_FEATURES: Final = (
    "tenure_months",
    "monthly_charges",
    "data_usage_gb",
    "support_calls_90d",
    "late_payments_12m",
    "num_products",
    "age",
    "satisfaction_score",
)
CATEGORICAL_FEATURES: Final = ("contract", "payment_method")
FEATURES: Final = NUMERIC_FEATURES + CATEGORICAL_FEATURES
CONTRACTS: Final = ("month-to-month", "one-year", "two-year")
PAYMENT_METHODS: Final = ("credit-card", "bank-transfer", "electronic-check", "mailed-check")


@dataclass(frozen=True)
class World:
    """Where the data comes from. ``shift`` moves the inputs, ``concept`` moves the label function;
    both in [0, 1]. ``label_noise`` is the share of labels drawn at random whatever the features."""

    shift: float = 0.0
    concept: float = 0.0
    label_noise: float = 0.03

    def __post_init__(self) -> None:
        for name in ("shift", "concept"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"World.{name} must be within [0, 1], got {value}")
        if not 0.0 <= self.label_noise < 0.5:
            raise ValueError(f"World.label_noise must be within [0, 0.5), got {self.label_noise}")


REFERENCE_WORLD: Final = World()
DRIFTED_WORLD: Final = World(shift=1.0, concept=1.0)


def _lerp(a: float, b: float, t: float) -> float:
    return a + (b - a) * t


def sample_features(n: int, world: World, rng: np.random.Generator) -> pd.DataFrame:
    """``n`` customers drawn from the input distribution of ``world`` (no label, no timestamp)."""
    if n < 0:
        raise ValueError(f"number of rows must be >= 0, got {n}")
    s = world.shift
    contract_p = np.array([_lerp(0.45, 0.70, s), _lerp(0.30, 0.20, s), 0.0])
    contract_p[2] = 1.0 - contract_p[:2].sum()
    payment_p = np.array([0.30, 0.25, _lerp(0.30, 0.45, s), 0.0])
    payment_p[3] = 1.0 - payment_p[:3].sum()
    contract = rng.choice(np.array(CONTRACTS, dtype=object), size=n, p=contract_p)
    payment = rng.choice(np.array(PAYMENT_METHODS, dtype=object), size=n, p=payment_p)
    long_contract = contract != "month-to-month"
    tenure = rng.gamma(shape=np.where(long_contract, 3.0, 1.4), scale=_lerp(11.0, 8.0, s), size=n)
    charges = rng.normal(_lerp(62.0, 80.0, s), 19.0, size=n)
    usage = rng.lognormal(mean=np.log(_lerp(14.0, 30.0, s)), sigma=0.55, size=n)
    support = rng.poisson(_lerp(1.1, 1.5, s), size=n)
    late = rng.poisson(np.where(payment == "electronic-check", 0.9, 0.4), size=n)
    products = 1 + rng.poisson(_lerp(1.2, 0.9, s), size=n)
    age = rng.normal(_lerp(46.0, 36.0, s), 13.0, size=n)
    satisfaction = rng.normal(6.5 - 0.35 * support, 1.6, size=n)
    return pd.DataFrame(
        {
            "tenure_months": np.clip(np.round(tenure), 0, 72).astype(float),
            "monthly_charges": np.round(np.clip(charges, 18.0, 140.0), 2),
            "data_usage_gb": np.round(np.clip(usage, 0.1, 200.0), 2),
            "support_calls_90d": support.astype(float),
            "late_payments_12m": np.minimum(late, 12).astype(float),
            "num_products": np.minimum(products, 6).astype(float),
            "age": np.clip(np.round(age), 18, 90).astype(float),
            "satisfaction_score": np.round(np.clip(satisfaction, 1.0, 10.0), 1),
            "contract": contract.astype(str),
            "payment_method": payment.astype(str),
        }
    )


def churn_logit(features: pd.DataFrame, concept: float) -> np.ndarray:
    """Log-odds of churn: the reference relationship blended towards the changed one.

    Reference: month-to-month customers, short tenure, support calls, late payments and low
    satisfaction churn. Changed: a competitor's cheap unlimited-data plan pulls away heavy data users
    and anyone paying a high monthly price; support calls and satisfaction hardly matter any more,
    and long tenure no longer protects heavy users."""
    c = concept
    f = features
    month_to_month = (f["contract"] == "month-to-month").to_numpy(float)
    two_year = (f["contract"] == "two-year").to_numpy(float)
    e_check = (f["payment_method"] == "electronic-check").to_numpy(float)
    tenure = f["tenure_months"].to_numpy(float)
    charges = f["monthly_charges"].to_numpy(float)
    usage = f["data_usage_gb"].to_numpy(float)
    support = f["support_calls_90d"].to_numpy(float)
    late = f["late_payments_12m"].to_numpy(float)
    products = f["num_products"].to_numpy(float)
    satisfaction = f["satisfaction_score"].to_numpy(float)
    reference = (
        -1.5 + 2.2 * month_to_month - 1.2 * two_year - 0.075 * tenure + 0.035 * (charges - 62.0)
        + 0.9 * support + 0.8 * late - 0.5 * (products - 2.0) + 0.6 * e_check - 0.55 * (satisfaction - 6.0)
    )
    changed = (
        -1.6 + 0.6 * month_to_month - 0.4 * two_year - 0.01 * tenure + 0.11 * (charges - 80.0)
        + 0.15 * np.log(usage / 30.0) * 10.0 + 0.1 * support + 0.8 * late - 0.6 * (products - 2.0)
        - 0.05 * (satisfaction - 6.0)
    )
    return 1.8 * ((1.0 - c) * reference + c * 1.55 * changed)


def sample_labels(features: pd.DataFrame, world: World, rng: np.random.Generator) -> np.ndarray:
    """0/1 churn labels: Bernoulli of the logistic model, plus ``label_noise`` coin flips."""
    p = 1.0 / (1.0 + np.exp(-churn_logit(features, world.concept)))
    labels = (rng.random(len(features)) < p).astype(np.int64)
    noisy = rng.random(len(features)) < world.label_noise
    labels[noisy] = rng.integers(0, 2, size=int(noisy.sum()))
    return labels


def generate(n: int, world: World, rng: np.random.Generator, start: dt.datetime, end: dt.datetime,
             id_offset: int = 0) -> pd.DataFrame:
    """``n`` labelled, time-stamped rows from ``world`` with event times spread over [start, end)."""
    if end <= start:
        raise ValueError(f"end {end.isoformat()} must be after start {start.isoformat()}")
    features = sample_features(n, world, rng)
    labels = sample_labels(features, world, rng)
    span = (end - start).total_seconds()
    offsets = np.sort(rng.random(n)) * span
    times = pd.to_datetime(start) + pd.to_timedelta(offsets, unit="s")
    out = features.copy()
    out.insert(0, TIMESTAMP, times.tz_convert("UTC") if times.tz is not None else times.tz_localize("UTC"))
    out.insert(0, ID, [f"c{id_offset + i:07d}" for i in range(n)])
    out[TARGET] = labels
    return out


def corrupt_labels(frame: pd.DataFrame, fraction: float = 1.0, rng: np.random.Generator | None = None) -> pd.DataFrame:
    """The bad batch: an upstream ETL bug wrote ``1 - churned`` for ``fraction`` of the rows.

    Inverted labels are the nasty kind of corruption: the features look perfectly normal (no input
    drift), and a model trained on them is confidently wrong. Either the gate catches it (the new
    model does worse than the champion on clean holdout data) or the canary's accuracy check does
    (feedback labels from real users disagree with it)."""
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"fraction of corrupted labels must be within (0, 1], got {fraction}")
    out = frame.copy()
    if fraction >= 1.0:
        mask = np.ones(len(out), dtype=bool)
    else:
        mask = (rng or np.random.default_rng(0)).random(len(out)) < fraction
    out.loc[mask, TARGET] = 1 - out.loc[mask, TARGET]
    return out


def feature_row(frame: pd.DataFrame, i: int) -> dict[str, float | str]:
    """One row's features as the JSON-able mapping an inference request carries."""
    row = frame.iloc[i]
    return {name: (str(row[name]) if name in CATEGORICAL_FEATURES else float(row[name])) for name in FEATURES}


# --- the store ----------------------------------------------------------------------------------

def dataset_dir(store_dir: str | os.PathLike[str], name: str) -> Path:
    """``<store>/datasets/<name>/``: where a TrainingPipeline's ``data.source`` points."""
    return Path(store_dir) / "datasets" / name


def write_partition(store_dir: str | os.PathLike[str], name: str, frame: pd.DataFrame, partition: str) -> Path:
    """Write ``frame`` as ``<store>/datasets/<name>/<partition>.parquet``, atomically: a reader (the
    trainer, the newData trigger) sees the whole partition or none of it, never half a file."""
    if not partition or "/" in partition or partition.startswith("."):
        raise ValueError(f"partition name must be a plain file name, got {partition!r}")
    folder = dataset_dir(store_dir, name)
    folder.mkdir(parents=True, exist_ok=True)
    final = folder / f"{partition}.parquet"
    tmp = folder / f".{partition}.parquet.tmp"
    frame.to_parquet(tmp, index=False)
    os.replace(tmp, final)
    return final


def read_dataset(store_dir: str | os.PathLike[str], name: str) -> pd.DataFrame:
    """All partitions of a dataset, in event-time order (for tests and the report)."""
    files = sorted(dataset_dir(store_dir, name).glob("*.parquet"))
    if not files:
        raise FileNotFoundError(f"no Parquet partitions under {dataset_dir(store_dir, name)}")
    return pd.concat([pd.read_parquet(f) for f in files], ignore_index=True).sort_values(TIMESTAMP)


def main(argv: list[str] | None = None) -> int:
    """``python -m noria_testbed.demo.dataset``: land one partition in a store (e.g. kind's host folder)."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m noria_testbed.demo.dataset", description=main.__doc__)
    parser.add_argument("--store", required=True, help="local directory of the store root, e.g. /tmp/noria-store")
    parser.add_argument("--name", default="churn", help="dataset folder under <store>/datasets/ (default churn)")
    parser.add_argument("--partition", required=True, help="file name without .parquet, e.g. part-0001-history")
    parser.add_argument("--rows", type=int, default=5000)
    parser.add_argument("--world", choices=["reference", "drifted"], default="reference")
    parser.add_argument("--days", type=float, default=90.0, help="event times spread over the last N days")
    parser.add_argument("--corrupt", action="store_true", help="invert every label (the bad batch)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    world = REFERENCE_WORLD if args.world == "reference" else DRIFTED_WORLD
    end = dt.datetime.now(dt.UTC)
    frame = generate(args.rows, world, np.random.default_rng(args.seed), end - dt.timedelta(days=args.days), end)
    if args.corrupt:
        frame = corrupt_labels(frame)
    print(write_partition(args.store, args.name, frame, args.partition))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

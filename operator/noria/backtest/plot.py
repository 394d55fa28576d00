"""The backtest's PNG: what users got per slice under each policy, with the runs marked, and what
the triggers saw under the spec's own policy."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def plot(record: dict[str, Any], path: str | Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")  # files only: no display on CI or a server
    import matplotlib.pyplot as plt

    metric = record["metric"]
    fig, (ax, ax_t) = plt.subplots(2, 1, figsize=(11, 6.5), sharex=True, gridspec_kw={"height_ratios": [3, 2]})
    colours = ["tab:blue", "tab:red", "tab:green", "tab:purple", "tab:orange"]
    for i, (name, policy) in enumerate(record["policies"].items()):
        colour = colours[i % len(colours)]
        xs = [s["index"] for s in policy["slices"]]
        ys = [s["metrics"].get(metric) for s in policy["slices"]]
        summary = policy["summary"]
        ax.plot(xs, [float("nan") if y is None else y for y in ys], color=colour, linewidth=1.3,
                label=f"{name}: {metric} {summary['served']} with {summary['runs']} run(s)")
        for s in policy["slices"]:
            for run in s["started"]:
                finished: dict[str, Any] = next((f for f in s["finished"] if f["id"] == run["id"]), {})
                passed = finished.get("outcome") == "Succeeded"
                ax.plot([s["index"]], [1.0 + 0.02 * (i + 1)], marker="v", color=colour, markersize=6,
                        markerfacecolor=colour if passed else "none", linestyle="none")
    ax.set_ylabel(metric + (" (higher is better)" if metric != "rmse" else " (lower is better)"))
    if metric != "rmse":
        ax.set_ylim(max(0.0, ax.get_ylim()[0]), 1.0 + 0.02 * (len(record["policies"]) + 1.5))
    ax.grid(alpha=0.3)
    ax.legend(loc="lower left", fontsize=8)
    ax.set_title(f"Backtest of {record['pipeline']}: what users got per slice ({record['slice']}); "
                 "▼ = a run (filled: its model passed the gate)", fontsize=10)
    spec_policy = next(iter(record["policies"].values()))
    xs = [s["index"] for s in spec_policy["slices"]]
    drift = [float(s["drift"]) if s.get("drift") not in (None, "") else float("nan") for s in spec_policy["slices"]]
    perf = [float(s["performance"]) if s.get("performance") not in (None, "") else float("nan")
            for s in spec_policy["slices"]]
    ax_t.plot(xs, drift, color="tab:purple", drawstyle="steps-post", label="drift trigger: value seen")
    threshold = record.get("driftThreshold")
    if threshold is not None:
        ax_t.axhline(float(threshold), color="tab:purple", linestyle="--", linewidth=1, label=f"drift threshold {threshold}")
    if any(p == p for p in perf):
        ax_p = ax_t.twinx()
        ax_p.plot(xs, perf, color="tab:orange", drawstyle="steps-post", label="performance trigger: live metric")
        ax_p.set_ylabel("live metric", color="tab:orange")
        ax_p.legend(loc="upper right", fontsize=8)
    ax_t.set_ylabel("drift score", color="tab:purple")
    ax_t.set_xlabel("slice")
    ax_t.grid(alpha=0.3)
    ax_t.legend(loc="upper left", fontsize=8)
    ax_t.set_title(f"What the triggers of {spec_policy['summary']['policy']} saw at each pass", fontsize=10)
    fig.tight_layout()
    out = Path(path)
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out

"""``python -m noria`` / ``noria``: run the Noria operator (Kopf) with Noria's settings.

By default the process takes part in leader election (``noria.leader``): it serves its liveness
endpoint and metrics at once, and acts only while it holds the Lease, so several replicas can run
and exactly one acts. ``--no-leader-election`` (or ``NORIA_LEADER_ELECTION=false``) acts at once,
for a single process on a laptop; never run two of those against one cluster.

``python -m noria backtest pipeline.yaml --data <uri> ...`` replays a TrainingPipeline spec over
historical data instead (``noria.backtest``; it needs no cluster and never imports kopf).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys


def main(argv: list[str] | None = None) -> None:
    args_in = sys.argv[1:] if argv is None else argv
    if args_in[:1] == ["backtest"]:
        from noria.backtest.cli import main as backtest_main

        sys.exit(backtest_main(args_in[1:]))
    from noria import leader

    parser = argparse.ArgumentParser(prog="noria", description="Run the Noria operator (or: noria backtest --help).")
    parser.add_argument("--namespace", "-n", action="append", default=None,
                        help="watch only this namespace (repeatable); default: cluster-wide")
    parser.add_argument("--liveness", default=os.environ.get("NORIA_LIVENESS", "http://0.0.0.0:8080/healthz"),
                        help="liveness endpoint URL (served by standby and leader alike)")
    parser.add_argument("--no-leader-election", dest="leader_election", action="store_false",
                        help="act at once without holding the leader Lease (one process only; "
                             f"also {leader.ELECTION_ENV}=false)")
    parser.add_argument("--verbose", action="store_true")
    args = parser.parse_args(args_in)
    try:
        elect = args.leader_election and leader.election_enabled()
        if elect:
            leader.LeaseConfig.from_env(os.environ, args.namespace or ())  # a bad setting fails here, named
    except ValueError as exc:
        parser.error(str(exc))

    from noria import operator_main  # registers settings and handlers

    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO)
    sys.exit(operator_main.run(args.namespace or [], args.liveness, elect))


if __name__ == "__main__":
    main()

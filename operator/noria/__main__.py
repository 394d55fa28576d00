"""``python -m noria`` / ``noria``: run the Noria operator (Kopf) with Noria's settings.

``python -m noria backtest pipeline.yaml --data <uri> ...`` replays a TrainingPipeline spec over
historical data instead (``noria.backtest``; it needs no cluster and never imports kopf).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys


def main(argv: list[str] | None = None) -> None:
    args_in = sys.argv[1:] if argv is None else argv
    if args_in[:1] == ["backtest"]:
        from noria.backtest.cli import main as backtest_main

        sys.exit(backtest_main(args_in[1:]))
    parser = argparse.ArgumentParser(prog="noria", description="Run the Noria operator (or: noria backtest --help).")
    parser.add_argument("--namespace", "-n", action="append", default=None,
                        help="watch only this namespace (repeatable); default: cluster-wide")
    parser.add_argument("--liveness", default=os.environ.get("NORIA_LIVENESS", "http://0.0.0.0:8080/healthz"),
                        help="Kopf liveness endpoint URL")
    parser.add_argument("--verbose", action="store_true")
    args = parser.parse_args(args_in)

    import kopf

    from noria import operator_main  # noqa: F401  (registers settings and handlers)

    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO)
    asyncio.run(
        kopf.operator(
            clusterwide=not args.namespace,
            namespaces=args.namespace or [],
            liveness_endpoint=args.liveness,
            standalone=True,  # one replica (Deployment strategy Recreate): Kopf peering is not leader election
        )
    )


if __name__ == "__main__":
    main()

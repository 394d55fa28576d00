"""``python -m noria`` / ``noria``: run the Noria operator (Kopf) with Noria's settings."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="noria", description="Run the Noria operator.")
    parser.add_argument("--namespace", "-n", action="append", default=None,
                        help="watch only this namespace (repeatable); default: cluster-wide")
    parser.add_argument("--liveness", default=os.environ.get("NORIA_LIVENESS", "http://0.0.0.0:8080/healthz"),
                        help="Kopf liveness endpoint URL")
    parser.add_argument("--verbose", action="store_true")
    args = parser.parse_args(argv)

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

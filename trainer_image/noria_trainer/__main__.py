"""``python -m noria_trainer run --spec <run-spec.json> [--termination-log PATH]``."""

from __future__ import annotations

import argparse
import sys

from noria_trainer.run import EXIT_SPEC, default_termination_log, run_from_file


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m noria_trainer",
                                     description="Run one Noria training run (see the package docstring).")
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("run", help="train, evaluate, gate and write one model version")
    run.add_argument("--spec", required=True, help="run spec JSON (ConfigMap <pipeline>-r<N>, key spec.json)")
    run.add_argument("--termination-log", default=None,
                     help="where to write the summary (default /dev/termination-log when it exists)")
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:
        return EXIT_SPEC if exc.code else 0
    return run_from_file(args.spec, args.termination_log or default_termination_log())


if __name__ == "__main__":
    sys.exit(main())

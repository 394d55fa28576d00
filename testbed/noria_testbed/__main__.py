"""``python -m noria_testbed up``: the local test bed for a person (``make dev-cluster``).

Starts the control plane, Noria's CRDs, the node agent and Prometheus, prints how to reach
them, and runs until Ctrl-C (or SIGTERM), then stops everything.
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from pathlib import Path

from noria_testbed.testbed import LocalTestbed


def up(args: argparse.Namespace) -> int:
    stop = threading.Event()
    # Handle both explicitly: a shell starting us in the background sets SIGINT to "ignore".
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    testbed = LocalTestbed(Path(args.workdir) if args.workdir else None,
                           store_dir=Path(args.store_dir) if args.store_dir else None,
                           prometheus=not args.no_prometheus, keep_workdir=args.keep)
    print("starting the local control plane ...", file=sys.stderr, flush=True)
    try:
        testbed.start()
        timings = ", ".join(f"{k} {v:.1f}s" for k, v in testbed.timings.items())
        kept = "kept" if args.keep else "removed on exit unless --keep"
        print(f"# noria testbed is up ({timings}); component logs in {testbed.log_dir} ({kept})")
        print(f"export KUBECONFIG={testbed.kubeconfig}")
        print(f"export PATH={testbed.binaries}:$PATH   # kubectl {testbed.binaries / 'kubectl'}")
        if testbed.prometheus is not None:
            print(f"# Prometheus: {testbed.prometheus.url} ({testbed.prometheus.binaries.origin}; "
                  f"pods found through {testbed.prometheus.discovery})")
            print(f"export NORIA_PROMETHEUS_URL={testbed.prometheus.url}")
        assert testbed.node_agent is not None
        print(f"# node agent targets: {testbed.node_agent.sd_url}; pod logs under {testbed.node_agent.root}/pods")
        print(f"# artifact store (PVC noria-store): {testbed.store_dir}")
        print("# Ctrl-C stops everything", flush=True)
        while not stop.wait(1.0):
            testbed.control_plane.check_alive()
    except KeyboardInterrupt:
        pass
    finally:
        print("stopping ...", file=sys.stderr, flush=True)
        testbed.stop()
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m noria_testbed", description=__doc__.split("\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    start = commands.add_parser("up", help="start the test bed and run until Ctrl-C")
    start.add_argument("--workdir", help="directory for certs, etcd data, logs (default: a new temp dir)")
    start.add_argument("--store-dir", help="directory the PVC noria-store maps to (default: <workdir>/store)")
    start.add_argument("--no-prometheus", action="store_true", help="do not start Prometheus")
    start.add_argument("--keep", action="store_true", help="keep the temp workdir (logs, store) after stopping")
    args = parser.parse_args(argv)
    return up(args)


if __name__ == "__main__":
    sys.exit(main())

"""``python -m noria_testbed.node_agent``: the command line of the node agent."""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
from pathlib import Path

from noria_testbed.kubeapi import KubeApi
from noria_testbed.node_agent.agent import NodeAgent
from noria_testbed.node_agent.common import LOGGER_NAME, NODE_NAME, RUN_MARKER_ENV, STORE_CLAIM

log = logging.getLogger(LOGGER_NAME)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m noria_testbed.node_agent",
                                     description="Noria's node agent: one Kubernetes Node whose pods run as local "
                                                 "processes.")
    parser.add_argument("--kubeconfig", type=Path, required=True)
    parser.add_argument("--root", type=Path, required=True, help="pod directories, logs and claim volumes")
    parser.add_argument("--store-dir", type=Path, required=True, help=f"what the claim {STORE_CLAIM!r} maps to")
    parser.add_argument("--listen", default="127.0.0.1:0", help="host:port of the /sd and /healthz endpoint")
    parser.add_argument("--node-name", default=NODE_NAME)
    parser.add_argument("--run-id", default="", help=f"value of {RUN_MARKER_ENV} in every pod process")
    parser.add_argument("--pod-cidr", default="127.0.0.0/17", help="loopback block pod addresses come from")
    parser.add_argument("--kubelet-port", type=int, default=0, help="serve /containerLogs on 127.0.0.1:PORT (TLS)")
    parser.add_argument("--tls-cert", type=Path, help="serving certificate for --kubelet-port")
    parser.add_argument("--tls-key", type=Path, help="its key")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per readiness probe is noise
    host, _, port = args.listen.rpartition(":")

    async def run() -> None:
        api = KubeApi(args.kubeconfig)
        agent = NodeAgent(api, root=args.root, store_dir=args.store_dir, node_name=args.node_name, run_id=args.run_id,
                          kubeconfig=args.kubeconfig.resolve(), kubelet_port=args.kubelet_port,
                          tls=(args.tls_cert, args.tls_key) if args.tls_cert and args.tls_key else None,
                          pod_cidr=args.pod_cidr)
        main_task = asyncio.current_task()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, main_task.cancel)  # type: ignore[union-attr]
        try:
            await agent.run(host, int(port))
        except asyncio.CancelledError:
            log.info("node agent stopping")
        finally:
            await api.close()

    args.root.mkdir(parents=True, exist_ok=True)
    args.store_dir.mkdir(parents=True, exist_ok=True)
    asyncio.run(run())

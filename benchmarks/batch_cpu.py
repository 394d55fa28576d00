"""CPU time of one micro-batch in the model server, by stage, at 1, 2, 4 and 11 requests a batch.

    .venv/bin/python benchmarks/batch_cpu.py [--before REV] [--batches 3000] [--sizes 1,2,4,11] [--models logistic,hgb]
        [--rate 10000]

Drives a real ``ModelServer`` in process, as the loop does under load: ``handle()`` for each request of a
batch (the OIP JSON body of server_latency.py, one row each, the parse stage), then one loop turn runs
``_flush`` (predict, drift count, answers, ledger and prediction-log offer). The offers are taken by a
stand-in that does not render them: the log's writer thread, rendering meanwhile, makes this thread's
CPU vary by its GIL hand-overs (``--log-thread`` keeps it). Drift counting and the prediction log are on, as by
default. A server that settles its answered batches' bookkeeping in groups (``ModelServer.settle``, within
``SETTLE_SECONDS``) settles here every ``--rate`` x SETTLE_SECONDS requests, as its timer would at that rate.
``time.thread_time`` (this thread's CPU, so other processes hardly move it) is read around each batch: the
"total" columns are CPU µs per batch and per request. A second pass wraps each stage
(predict, count, serialise = building the answer, reply = setting it, ledger+log, duration metric) in
a timer of its own, which adds ~1 µs per wrapped call, to say where the batch's time goes.
``--before REV`` runs the same in the server code of that commit (a git worktree), alternating with
the working tree's.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

ROOT = Path(__file__).resolve().parent.parent
STAGES = ("parse", "predict", "count", "serialise", "reply", "duration", "log")


def run(source: Path, kinds: list[str], sizes: list[int], batches: int, log_thread: bool, rate: float) -> None:
    sys.path.insert(0, str(source / "server_image"))
    from noria_server import oip, serve  # noqa: PLC0415
    from noria_server.httpserver import Request  # noqa: PLC0415
    from noria_server.reference_models import train_and_save  # noqa: PLC0415

    sys.path.insert(0, str(ROOT / "benchmarks"))
    from server_vs_mlserver import payload  # noqa: PLC0415

    body = payload()
    for kind in kinds:
        work = tempfile.mkdtemp(prefix="batch-cpu-")
        saved = train_and_save(kind, work)  # type: ignore[arg-type]
        settings = serve.ServeSettings(saved.artifact_uri, saved.digest, kind, "v1", profile_uri=saved.profile_uri,
                                       store_root=work, namespace="ns", pipeline="p", batch_hold_us=0.0)
        server = serve.ModelServer(settings)

        async def main(server: serve.ModelServer = server, kind: str = kind) -> None:
            await server._load()  # as serving loads: model, warm-up, drift bins, prediction log, settled heap
            assert server.state == "ready", server.reason
            assert server.predictions_log is not None
            if not log_thread:  # the offers are taken but not rendered: no writer thread contends for the GIL
                await asyncio.get_running_loop().run_in_executor(None, server.predictions_log.close)
                server.predictions_log = _Offers()  # type: ignore[assignment]
            path = f"/v2/models/{kind}/infer"
            written: list[object] = []

            async def batch(n: int) -> float:
                replies = [server.handle(Request("POST", path, b"", {}, body)) for _ in range(n)]
                for r in replies:
                    r.on_done(written.append)  # type: ignore[union-attr]
                await asyncio.sleep(0)  # the loop turn that runs _flush
                return 0.0

            for n in sizes:  # warm-up
                for _ in range(50):
                    await batch(n)
            await asyncio.sleep(1.5)  # the log's first flush, off the timed turns
            gc.collect()
            settle_seconds = getattr(serve, "SETTLE_SECONDS", None)

            def settles(i: int, n: int) -> bool:  # whether the settle timer would fire after batch i at --rate
                return settle_seconds is not None and (i + 1) % max(1, round(rate * settle_seconds / n)) == 0

            for n in sizes:
                t = 0.0
                for i in range(batches):
                    t0 = time.thread_time()
                    replies = [server.handle(Request("POST", path, b"", {}, body)) for _ in range(n)]
                    for r in replies:
                        r.on_done(written.append)  # type: ignore[union-attr]
                    server._flush()
                    if settles(i, n):
                        server.settle()
                    t += time.thread_time() - t0
                    await asyncio.sleep(0)  # the scheduled _flush finds nothing
                    written.clear()
                per_batch = t / batches * 1e6
                print(f"  {kind:8s} {n:3d} rows: total {per_batch:7.1f} µs/batch {per_batch / n:7.1f} µs/request")
            stages = _wrap(server, oip, serve)
            for n in sizes:
                for v in stages.values():
                    v[0] = 0.0
                for i in range(batches // 2):
                    stages["parse"][1](lambda n=n: [server.handle(Request("POST", path, b"", {}, body))
                                                    for _ in range(n)], ())
                    server.pending.clear()
                    server.pending_rows = 0
                    replies = [server.handle(Request("POST", path, b"", {}, body)) for _ in range(n)]
                    for r in replies:
                        r.on_done(written.append)  # type: ignore[union-attr]
                    server._flush()
                    if settles(i, n):
                        server.settle()
                    await asyncio.sleep(0)
                    written.clear()
                cells = "  ".join(f"{s} {stages[s][0] / (batches // 2) * 1e6:6.1f}" for s in STAGES)
                print(f"  {kind:8s} {n:3d} rows, µs/batch by stage: {cells}")

        asyncio.run(main())


class _Offers:
    """Takes the prediction log's offers as ``JsonlLog`` does (the render stays unrun)."""

    def __init__(self) -> None:
        self.renders: list[object] = []

    def offer(self, n: int, render: object) -> None:
        self.renders.append(render)
        if len(self.renders) > 1000:
            self.renders.clear()

    def offer_rendered(self, n: int, render: object) -> None:
        """A micro-batch's lines, rendered on the loop thread as ``JsonlLog.offer_rendered`` does."""
        self.offer(n, render())  # type: ignore[operator]

    def room(self) -> int:
        return 1 << 30

    def drop(self, n: int) -> None:
        pass


def _wrap(server, oip, serve) -> dict[str, list]:  # type: ignore[no-untyped-def]
    """Time each stage by wrapping the function that does it (thread CPU, summed per stage)."""
    clock = time.thread_time
    stages: dict[str, list] = {}  # type: ignore[type-arg]

    def timer(name: str):  # type: ignore[no-untyped-def]
        cell = [0.0, None]

        def timed(fn, args, kwargs=None):  # type: ignore[no-untyped-def]
            t0 = clock()
            try:
                return fn(*args, **(kwargs or {}))
            finally:
                cell[0] += clock() - t0

        cell[1] = timed
        stages[name] = cell
        return timed

    def patch(obj, attr: str, name: str) -> None:  # type: ignore[no-untyped-def]
        fn = getattr(obj, attr)
        t = timer(name) if name not in stages else stages[name][1]
        setattr(obj, attr, lambda *a, **k: t(fn, a, k))

    timer("parse")
    patch(server.model, "predict", "predict")
    if server.metrics.bins is not None:
        patch(server.metrics.bins, "observe", "count")
    patch(server.metrics, "count_predictions", "count")
    if hasattr(serve, "_answer_body"):
        patch(serve, "_answer_body", "serialise")
    else:
        patch(oip, "infer_response", "serialise")
    patch(server, "_remember_and_log", "log")
    duration = server.metrics.duration
    t_d = timer("duration")
    observe = duration.observe
    server.metrics.duration = type("D", (), {"observe": staticmethod(lambda v: t_d(observe, (v,)))})()
    from noria_server import httpserver  # noqa: PLC0415
    set_result = httpserver.Reply.set_result
    t_r = timer("reply")
    httpserver.Reply.set_result = lambda self, r: t_r(set_result, (self, r))  # type: ignore[method-assign]
    return stages


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--before", metavar="REV")
    parser.add_argument("--batches", type=int, default=3000)
    parser.add_argument("--sizes", default="1,2,4,11")
    parser.add_argument("--models", default="logistic,hgb")
    parser.add_argument("--rate", type=float, default=10_000.0,
                        help="req/s at which a settling server's timer is modelled "
                             "(settles every rate x SETTLE_SECONDS)")
    parser.add_argument("--source", help=argparse.SUPPRESS)
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument("--log-thread", action="store_true",
                        help="keep the prediction log's writer thread (its GIL turns then move this thread's CPU)")
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    kinds = args.models.split(",")
    if args.source:
        run(Path(args.source), kinds, sizes, args.batches, args.log_thread, args.rate)
        return
    print(f"load average {os.getloadavg()}")
    sources = [("after (working tree)", ROOT)]
    tree = None
    if args.before:
        tree = Path(tempfile.mkdtemp(prefix="batch-cpu-before-"))
        subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", str(tree), args.before],
                       check=True, capture_output=True)
        sources.insert(0, (f"before ({args.before})", tree))
    try:
        for _ in range(args.repeat):
            for name, source in sources:
                print(name, flush=True)
                subprocess.run([sys.executable, __file__, "--source", str(source), "--batches", str(args.batches),
                                "--sizes", args.sizes, "--models", args.models, "--rate", str(args.rate)]
                               + (["--log-thread"] if args.log_thread else []), check=True)
    finally:
        if tree is not None:
            subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(tree)], check=False)
    print(f"load average {os.getloadavg()}")


if __name__ == "__main__":
    main()

"""Run the Noria operator under tracemalloc: ``python benchmarks/scale_tracemalloc.py OUT -- <noria args>``.

``benchmarks/scale.py --tracemalloc`` starts the operator this way to see where its memory goes: every
20 seconds the memory still held, grouped by the file and by the line that allocated it (the
innermost frame), is written to OUT, replacing the previous snapshot. tracemalloc slows Python down severalfold, so the CPU and latency figures of such
a run mean nothing; only its memory breakdown does.
"""

from __future__ import annotations

import os
import sys
import threading
import time
import tracemalloc
from pathlib import Path


def snapshot_loop(out: Path, every: float = 20.0, top: int = 30) -> None:
    while True:
        time.sleep(every)
        snapshot = tracemalloc.take_snapshot().filter_traces([
            tracemalloc.Filter(False, tracemalloc.__file__), tracemalloc.Filter(False, "<frozen importlib._bootstrap>")])
        by_line = snapshot.statistics("lineno")
        by_file = snapshot.statistics("filename")
        current, peak = tracemalloc.get_traced_memory()
        lines = [f"# traced now {current / 2**20:.1f} MB, peak {peak / 2**20:.1f} MB, at {time.strftime('%H:%M:%S')}",
                 "## by file"]
        lines += [f"{s.size / 2**20:8.2f} MB {s.count:9d} blocks  {s.traceback[0].filename}" for s in by_file[:top]]
        lines.append("## by line")
        lines += [f"{s.size / 2**20:8.2f} MB {s.count:9d} blocks  {s.traceback[0].filename}:{s.traceback[0].lineno}"
                  for s in by_line[:top]]
        temporary = out.with_suffix(".tmp")
        temporary.write_text("\n".join(lines) + "\n")
        temporary.replace(out)


def main() -> None:
    out, separator, *noria_args = sys.argv[1:]
    if separator != "--":
        sys.exit("usage: scale_tracemalloc.py OUT -- <noria arguments>")
    # As scale.py's launcher: the dev venv's packages the operator image lacks are not imported.
    sys.modules.update(dict.fromkeys(filter(None, os.environ.get("NORIA_SCALE_HIDE_MODULES", "").split(","))))
    tracemalloc.start(8)
    threading.Thread(target=snapshot_loop, args=(Path(out),), daemon=True).start()
    from noria.__main__ import main as noria_main

    noria_main(noria_args)


if __name__ == "__main__":
    main()

"""``python -m noria.monitoring [DIR]``: write the generated monitoring files (default: the chart's)."""

from __future__ import annotations

import sys
from pathlib import Path

from . import CHART_FILES, generated, write


def main(argv: list[str]) -> int:
    if len(argv) > 1 or (argv and argv[0].startswith("-")):
        print("usage: python -m noria.monitoring [DIR]   (default: charts/noria/files/monitoring)", file=sys.stderr)
        return 2
    directory = Path(argv[0]) if argv else CHART_FILES
    changed = write(directory)
    for path in changed:
        print(f"wrote {path}")
    print(f"{len(generated())} files in {directory}, {len(changed)} changed")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

"""``python -m noria.cli``: the same program as the ``kubectl-noria`` executable."""

import sys

from noria.cli.main import main

if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env bash
# Evidently, the drift peer, in a virtualenv of its own: it imports pandas internals that pandas 3
# removed, and the project venv uses pandas 3. benchmarks/drift_vs_evidently.py runs it from here.
set -euo pipefail
VENV="${NORIA_EVIDENTLY_VENV:-$HOME/.cache/noria/bench-evidently}"
if [ ! -x "$VENV/bin/python" ]; then
  python3 -m venv "$VENV"
fi
"$VENV/bin/pip" install -q --disable-pip-version-check 'evidently==0.7.23' 'pandas<3'
"$VENV/bin/python" -c "import evidently, pandas; print('evidently', evidently.__version__, 'pandas', pandas.__version__)"

#!/usr/bin/env bash
# KServe's Python SDK (FastAPI + uvicorn model server) in its own venv, for server_vs_mlserver.py.
# KServe publishes its sklearn server only as an image; kserve_sklearn_peer.py is that model class.
set -euo pipefail
VENV="${NORIA_CACHE:-$HOME/.cache/noria}/bench-kserve"
SKLEARN="$(.venv/bin/python -c 'import sklearn; print(sklearn.__version__)')"
python3 -m venv "$VENV"
"$VENV/bin/pip" install -q "kserve==0.21.0" "scikit-learn==$SKLEARN" joblib
"$VENV/bin/python" -c "import kserve; print('kserve', kserve.__version__ if hasattr(kserve, '__version__') else 'ok')"

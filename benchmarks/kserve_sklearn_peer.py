"""KServe's sklearn model server, reproduced on the ``kserve`` SDK from PyPI (run inside its own venv).

KServe ships its sklearn server (``sklearnserver``) only as a container image, not on PyPI; the
server is a ``kserve.Model`` that ``joblib.load``s the model and calls ``predict`` on the decoded
OIP v2 tensor, served by ``kserve.ModelServer`` (FastAPI + uvicorn). This file is that, so the
benchmark compares against the same stack:

    ~/.cache/noria/bench-kserve/bin/python benchmarks/kserve_sklearn_peer.py --model_name m \
        --model_path model.joblib --http_port 8080
"""

from __future__ import annotations

import argparse

import joblib
import kserve
from kserve.utils.utils import get_predict_input, get_predict_response


class SKLearnModel(kserve.Model):  # type: ignore[misc]
    def __init__(self, name: str, path: str) -> None:
        super().__init__(name)
        self.path = path
        self.load()

    def load(self) -> bool:
        self._model = joblib.load(self.path)
        self.ready = True
        return True

    def predict(self, payload, headers=None):  # type: ignore[no-untyped-def]
        instances = get_predict_input(payload)
        return get_predict_response(payload, self._model.predict(instances), self.name)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(parents=[kserve.model_server.parser])
    parser.add_argument("--model_path", required=True)
    args, _ = parser.parse_known_args()
    kserve.ModelServer().start([SKLearnModel(args.model_name, args.model_path)])

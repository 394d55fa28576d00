"""A model server in process, ready, on a real fitted scikit-learn model (no artifact, no sockets),
for the unit tests of what the server answers."""

from __future__ import annotations

import asyncio
from typing import Any

import numpy as np
import pandas as pd
from noria_server.httpserver import Reply, Request, Response
from noria_server.model import ServedModel
from noria_server.serve import ModelServer, ServeSettings
from sklearn.linear_model import LinearRegression, LogisticRegression

FEATURES = ["a", "b", "c"]


def fitted_server(kind: str, **settings: Any) -> ModelServer:
    """A "classifier" (label: a > 0) or a regressor (3a + 1) on three normal features, served as
    model ``m`` version ``m-v1`` without a prediction log; ``settings`` override ServeSettings."""
    rng = np.random.default_rng(0)
    frame = pd.DataFrame(rng.normal(size=(200, len(FEATURES))), columns=FEATURES)
    if kind == "classifier":
        estimator: Any = LogisticRegression().fit(frame, (frame["a"] > 0).astype(int))
    else:
        estimator = LinearRegression().fit(frame, frame["a"] * 3 + 1)
    server = ModelServer(ServeSettings(artifact_uri="file:///unused", digest="sha256:0", model="m", version="m-v1",
                                       prediction_log=False, **settings))
    server.model = ServedModel.from_estimator(estimator, None)
    server.make_feedback_sink()  # as loading does once the model is there
    server.state = server.reason = "ready"
    return server


async def handled(server: ModelServer, request: Request) -> Response:
    """The server's response to ``request`` as its HTTP layer gets it: at once, or once a micro-batch
    sets the ``Reply``."""
    result = server.handle(request)
    if isinstance(result, Reply):
        done: asyncio.Future[Response] = asyncio.get_running_loop().create_future()
        result.on_done(done.set_result)
        return await done
    return result

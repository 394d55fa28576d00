"""A local HTTP server answering as ``feast serve`` 0.67 does, for the unit tests of the model
server's online lookup (noria_server.online) and feedback sink (noria_server.feast_sink): one fake
for both, so the shapes they are tested against cannot drift apart."""

from __future__ import annotations

import http.server
import json
import socket
import ssl
import threading
import time
from typing import Any

from server_helpers import FEATURES

# The store: customer id -> (a, b, c), the model's three features.
STORE = {1001: (1.5, 0.2, -0.3), 1002: (-2.0, 1.0, 0.5), 1003: (0.1, -0.7, 2.2), 1004: (-0.4, 0.0, 0.0),
         1005: (None, 0.3, 0.1)}  # 1005's a was written as null: a missing value, not a miss


class FakeFeast:
    """A threaded HTTP server answering POST /get-online-features as Feast 0.67's feature server over
    Redis did on the test bed: ``{"metadata": {"feature_names": [key, *features]}, "results":
    [{"values", "statuses", "event_timestamps"}, ...]}``, an unknown key as status PRESENT, value null,
    timestamp 1970-01-01T00:00:00Z (``not_found=True``: status NOT_FOUND, as other stores answer),
    errors as a JSON string (500), an unknown feature service as 404 with JSON in a JSON string.
    ``delay`` makes it slow, ``mode="error"`` fail.

    POST /push as Feast's push endpoint answers: 200 when taken (kept in ``pushes``), 404 with Feast's
    JSON error for a push source other than ``churn_feedback``, and, with ``push_mode="error"``, 500
    with a JSON string as its handler answers an exception; ``push_delay`` seconds before answering.
    The lookup's and the push's faults are set apart: a slow push must not slow the lookup."""

    def __init__(self, port: int = 0, tls: ssl.SSLContext | None = None) -> None:
        self.calls: list[dict[str, Any]] = []
        self.connections: list[socket.socket] = []
        self.mode = "ok"
        self.delay = 0.0
        self.not_found = False
        self.pushes: list[dict[str, Any]] = []
        self.push_calls = 0
        self.push_mode = "ok"
        self.push_delay = 0.0
        fake = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def setup(self) -> None:
                super().setup()
                fake.connections.append(self.connection)

            def do_POST(self) -> None:  # noqa: N802 - http.server's name
                body = json.loads(self.rfile.read(int(self.headers["content-length"])))
                if self.path == "/push":
                    return self._push(body)
                fake.calls.append({"path": self.path, **body})
                if fake.delay:
                    time.sleep(fake.delay)
                if fake.mode == "error":
                    return self._answer(500, "Error 111 connecting to 127.0.0.1:6379. Connection refused.")
                if body.get("feature_service") not in (None, "churn_v1"):
                    return self._answer(404, json.dumps({
                        "module": "feast.errors", "class": "FeatureServiceNotFoundException",
                        "message": f"Feature service {body['feature_service']} does not exist in project noria"}))
                (key, ids), = body["entities"].items()
                names = FEATURES if "feature_service" in body else [ref.split(":")[1] for ref in body["features"]]
                results = [{"values": ids, "statuses": ["PRESENT"] * len(ids),
                            "event_timestamps": ["1970-01-01T00:00:00Z"] * len(ids)}]
                for name in names:
                    j = FEATURES.index(name)
                    values = [STORE[i][j] if i in STORE else None for i in ids]
                    known = [i in STORE for i in ids]
                    results.append({
                        "values": values,
                        "statuses": ["NOT_FOUND" if fake.not_found and not k else "PRESENT" for k in known],
                        "event_timestamps": ["2026-12-02T08:42:25Z" if k else "1970-01-01T00:00:00Z" for k in known]})
                self._answer(200, {"metadata": {"feature_names": [key, *names]}, "results": results})

            def _push(self, body: dict[str, Any]) -> None:
                fake.push_calls += 1
                if fake.push_delay:
                    time.sleep(fake.push_delay)
                if body["push_source_name"] != "churn_feedback":
                    return self._answer(404, json.dumps({
                        "module": "feast.errors", "class": "DataSourceObjectNotFoundException",
                        "message": f"Data source {body['push_source_name']} does not exist in project noria"}))
                if fake.push_mode == "error":
                    return self._answer(500, "The input dataframe columns do not match the batch source columns.")
                fake.pushes.append(body)
                return self._answer(200, None)

            def _answer(self, status: int, doc: Any) -> None:
                data = json.dumps(doc).encode() if doc is not None else b""
                self.send_response(status)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.server.daemon_threads = True  # a slow answer's thread never holds the test's end
        if tls is not None:
            self.server.socket = tls.wrap_socket(self.server.socket, server_side=True)
        self.scheme = "https" if tls is not None else "http"
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"{self.scheme}://127.0.0.1:{self.port}"

    def rows(self) -> list[dict[str, Any]]:
        """Every pushed row, as a dict of its columns."""
        out = []
        for push in self.pushes:
            df = push["df"]
            out += [{c: df[c][i] for c in df} for i in range(len(df["customer_id"]))]
        return out

    def stop(self) -> None:
        """Gone as a stopped process is: no listener, and its kept-alive connections closed."""
        self.server.shutdown()
        self.server.server_close()
        for conn in self.connections:
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

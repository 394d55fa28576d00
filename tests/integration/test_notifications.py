"""Webhook notifications against the real control plane, real server/router and trainer processes,
and real HTTP receivers started by the test.

Given ConfigMap and Secret ``noria-notifications`` in a namespace, when a Rollout is deployed,
paused, promoted, paused by its spec and aborted, and when a training run fails and versions are
approved and rejected, then each transition arrives at the receiver exactly once, with its
structured fields. Receivers that are down (connection refused) or hang (accept, never answer)
change nothing in the Rollout's timing or outcome, and are counted as failed.
"""

from __future__ import annotations

import json
import re
import socket
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from noria import notifications as n
from noria_testbed.processes import free_port
from rollout_helpers import create_model_version, rollout, rollout_status, save_model, wait_for
from training_helpers import classification_frame, pipeline_yaml, write_data

pytestmark = pytest.mark.integration

FAST_ROLLOUTS = {"NORIA_ROLLOUT_INTERVAL_SECONDS": "0.5", "NORIA_ROUTER_BACKEND_URLS": "clusterIP",
                 "NORIA_NOTIFICATIONS_CACHE_SECONDS": "2"}
# The helpers create ModelVersions by hand and then set their stage, so the operator may see them
# Registered first (an "awaits approval" notification): the live receiver here listens to Rollouts only.
ROLLOUT_TRANSITIONS = [n.ROLLOUT_PAUSED, n.ROLLOUT_PROMOTED, n.ROLLOUT_ABORTED, n.ROLLOUT_DEGRADED]
HANG_TIMEOUT = "3s"  # per try at the hanging receiver: with retries, ~14 s per notification if it blocked a pass


class Receiver:
    """A webhook receiver on 127.0.0.1: records every JSON body it is POSTed, answers 200."""

    def __init__(self) -> None:
        self.bodies: list[dict[str, Any]] = []
        received = self.bodies

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's name
                length = int(self.headers.get("Content-Length") or 0)
                body = json.loads(self.rfile.read(length))
                body["_content_type"] = self.headers.get("Content-Type")
                received.append(body)
                self.send_response(200)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hooks/T000/B000/token"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def seen(self) -> list[tuple[str | None, str, str, str | None]]:
        return [(b["transition"], b["reason"], b["name"], b.get("version")) for b in list(self.bodies)]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class HangingReceiver:
    """Accepts connections (the kernel's backlog does) and never answers."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}/hook"

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def receiver():
    r = Receiver()
    yield r
    r.close()


def configure(cluster, namespace: str, receivers: list[dict], urls: dict[str, str]) -> None:  # noqa: ANN001
    import yaml

    config_map = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "noria-notifications"},
                  "data": {"receivers": yaml.safe_dump(receivers)}}
    secret = {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "noria-notifications"}, "stringData": urls}
    for obj in (config_map, secret):
        cluster.kubectl("apply", "-n", namespace, "-f", "-", input=json.dumps(obj))


def notified(op, outcome: str) -> dict[str, float]:  # noqa: ANN001
    """noria_operator_notifications_total by reason for one outcome, from the operator's /metrics."""
    out: dict[str, float] = {}
    for line in op.metrics().splitlines():
        m = re.match(r'noria_operator_notifications_total\{(.*)\} ([0-9.e+]+)$', line)
        if m and f'outcome="{outcome}"' in m.group(1):
            reason = re.search(r'reason="([^"]+)"', m.group(1)).group(1)  # type: ignore[union-attr]
            out[reason] = float(m.group(2))
    return out


def annotate(cluster, namespace: str, what: str, *annotations: str) -> None:  # noqa: ANN001
    cluster.kubectl("annotate", "-n", namespace, *what.split(), *annotations, "--overwrite")


def test_each_rollout_transition_arrives_once_and_dead_receivers_change_nothing(
        cluster, namespace, operator_factory, store_claim, receiver):
    hanging = HangingReceiver()
    refused_url = f"http://127.0.0.1:{free_port()}/hook"  # nothing listens there
    every_step = [*n.TRANSITIONS, "StepInProgress"]  # the dead ones hear every pass that posts an Event
    configure(cluster, namespace,
              [{"name": "live", "events": ROLLOUT_TRANSITIONS}, {"name": "refused", "events": every_step},
               {"name": "hanging", "events": every_step, "timeout": HANG_TIMEOUT}],
              {"live": receiver.url, "refused": refused_url, "hanging": hanging.url})
    t0, marks = time.monotonic(), []

    def mark(what: str) -> None:
        marks.append(f"{what} {time.monotonic() - t0:.0f}s")

    try:
        store_claim(namespace)
        create_model_version(cluster, save_model(cluster.store_dir, namespace, 1))
        op = operator_factory(namespace, **FAST_ROLLOUTS)
        cluster.kubectl("apply", "-f", "-", input=rollout(namespace, {"canary": {"steps": [
            {"setWeight": 50}, {"pause": {"duration": "4s"}}, {"pause": {}}]}}))
        status = lambda: rollout_status(cluster, namespace)  # noqa: E731
        wait_for("churn-v1 Healthy", lambda: status().get("phase") == "Healthy", timeout=120,
                 on_timeout=lambda: str(status()))

        mark("a canary")
        # A canary: 50%, a timed pause of 4 s, then a pause for a person.
        create_model_version(cluster, save_model(cluster.store_dir, namespace, 2, seed=1))
        wait_for("step 1 (pause 4s)", lambda: status().get("currentStep") == 1, timeout=90,
                 on_timeout=lambda: str(status()))
        step1_seen = time.monotonic()
        wait_for("step 2 (pause for a person)", lambda: status().get("currentStep") == 2
                 and status().get("phase") == "Paused", timeout=60, on_timeout=lambda: str(status()))
        timed_pause = time.monotonic() - step1_seen
        mark("annotate")
        annotate(cluster, namespace, "mro churn", "noria.dev/promote=true")
        wait_for("churn-v2 promoted", lambda: status().get("stableVersion") == "churn-v2"
                 and status().get("phase") == "Healthy", timeout=60, on_timeout=lambda: str(status()))

        mark("another canary")
        # Another canary, paused by its spec, then aborted (an abort acts while paused).
        create_model_version(cluster, save_model(cluster.store_dir, namespace, 3, seed=2))
        wait_for("churn-v3 in canary", lambda: status().get("canaryVersion") == "churn-v3", timeout=90)
        mark("clusterkubectl")
        cluster.kubectl("patch", "mro", "churn", "-n", namespace, "--type=merge", "-p", '{"spec":{"paused":true}}')
        wait_for("Paused by spec", lambda: status().get("phase") == "Paused", timeout=30,
                 on_timeout=lambda: str(status()))
        mark("annotate")
        annotate(cluster, namespace, "mro churn", "noria.dev/abort=true")
        wait_for("churn-v3 aborted", lambda: not status().get("canaryVersion")
                 and status().get("stableVersion") == "churn-v2", timeout=60, on_timeout=lambda: str(status()))

        mark("expected")
        expected = [
            (n.ROLLOUT_PROMOTED, "FirstDeployment", "churn", "churn-v1"),
            (n.ROLLOUT_PAUSED, "PausedForPromotion", "churn", "churn-v2"),
            (n.ROLLOUT_PROMOTED, "Promoted", "churn", "churn-v2"),
            (n.ROLLOUT_PAUSED, "PausedByUser", "churn", "churn-v3"),
            (n.ROLLOUT_ABORTED, "AbortedByUser", "churn", "churn-v3"),
        ]
        wait_for("every transition at the live receiver", lambda: len(receiver.bodies) >= len(expected),
                 timeout=30, on_timeout=receiver.seen)
        time.sleep(3)  # a duplicate would come now
        assert receiver.seen() == expected
        last = receiver.bodies[-1]
        assert last["kind"] == "Rollout" and last["namespace"] == namespace and last["type"] == "Warning"
        assert last["pipeline"] == "churn" and last["time"].endswith("Z") and last["_content_type"] == "application/json"
        assert last["text"].startswith(f"Rollout {namespace}/churn aborted (AbortedByUser): aborted churn-v3")

        # The dead receivers cost the passes nothing: the 4 s pause took 4 s (plus a few polls on a busy
        # machine), where a send that blocked the pass that posted the step's Event would have added
        # the refused receiver's retries and the hanging one's three 3 s tries: ~19 s.
        assert timed_pause < 4 + 6, f"the 4s pause step took {timed_pause:.1f}s"
        final = status()
        assert final["stableVersion"] == "churn-v2" and final["weights"] == {"churn-v2": 100}
        # ... and they were tried, and counted as failed (the first deployment's, long since retried out).
        assert notified(op, "failed").get("FirstDeployment") == 2, notified(op, "failed")
        assert notified(op, "sent").get("AbortedByUser") == 1 and notified(op, "sent").get("FirstDeployment") == 1
        mark("end")
        print("FIGURE milestones:", ", ".join(marks))
        print(f"FIGURE timed 4s pause step with a refused and a hanging receiver: {timed_pause:.1f}s; "
              f"failed deliveries {notified(op, 'failed')}")
    finally:
        hanging.close()


def test_run_failed_and_versions_approved_and_rejected_arrive_once(cluster, namespace, operator_factory, store_claim,
                                                                    receiver):
    configure(cluster, namespace, [{"name": "live"}, {"name": "typo", "events": ["run-faild"]}],
              {"live": receiver.url})
    store_claim(namespace)
    tiny = write_data(cluster.store_dir, namespace, "tiny", classification_frame(30))
    good = write_data(cluster.store_dir, namespace, "auto", classification_frame(400))
    op = operator_factory(namespace)
    for manifest in (pipeline_yaml("tiny", tiny, min_rows=1000), pipeline_yaml("auto", good)):
        cluster.kubectl("apply", "-n", namespace, "-f", "-", input=manifest)
    # Two imported versions (created by hand: Registered until a person decides).
    for v in (1, 2):
        cluster.kubectl("apply", "-f", "-", input=json.dumps(save_model(cluster.store_dir, namespace, v, seed=v)))

    def stage(name: str) -> str | None:
        out = cluster.kubectl("get", "mv", name, "-n", namespace, "-o", "jsonpath={.status.stage}", check=False)
        return out.stdout.strip() or None

    wait_for("imported versions Registered", lambda: stage("churn-v1") == stage("churn-v2") == "Registered",
             timeout=60)
    annotate(cluster, namespace, "mv churn-v1", "noria.dev/approve=alice")
    annotate(cluster, namespace, "mv churn-v2", "noria.dev/reject=bob")
    expected = Counter({
        (n.VERSION_AWAITING_APPROVAL, "ModelVersionRegistered", "churn-v1", "churn-v1"): 1,
        (n.VERSION_AWAITING_APPROVAL, "ModelVersionRegistered", "churn-v2", "churn-v2"): 1,
        (n.VERSION_APPROVED, "ManuallyApproved", "churn-v1", "churn-v1"): 1,
        (n.VERSION_REJECTED, "ManuallyRejected", "churn-v2", "churn-v2"): 1,
        (n.RUN_FAILED, "TrainerFailed", "tiny", "tiny-v1"): 1,
        (n.VERSION_APPROVED, "AutoApproved", "auto-v1", "auto-v1"): 1,
    })
    wait_for("every transition at the receiver", lambda: len(receiver.bodies) >= sum(expected.values()),
             timeout=180, on_timeout=receiver.seen)
    time.sleep(3)  # a duplicate would come now
    assert Counter(receiver.seen()) == expected
    by_reason = {b["reason"]: b for b in receiver.bodies}
    assert by_reason["TrainerFailed"]["pipeline"] == "tiny" and by_reason["TrainerFailed"]["type"] == "Warning"
    assert "1000" in by_reason["TrainerFailed"]["message"]  # the trainer's own words
    assert by_reason["ManuallyApproved"]["message"] == "approved manually by user/alice"
    assert by_reason["AutoApproved"]["pipeline"] == "auto"

    # The bad receiver entry is named, once, in a Warning Event on the ConfigMap; the good one received.
    events = json.loads(cluster.kubectl("get", "events", "-n", namespace, "--field-selector",
                                        "involvedObject.name=noria-notifications", "-o", "json").stdout)["items"]
    warnings = [e for e in events if e["reason"] == "NotificationsInvalid"]
    assert len(warnings) == 1 and warnings[0]["type"] == "Warning", warnings
    assert "receivers[1] ('typo').events[0]: 'run-faild'" in warnings[0]["message"]
    assert "NotificationsInvalid" not in notified(op, "sent")


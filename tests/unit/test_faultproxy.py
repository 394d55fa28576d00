"""The fault proxy itself, in front of a small HTTPS server that answers like the API server (a list,
a watch stream of events, a write): it passes requests through unchanged until told otherwise, then
injects exactly the fault asked for (410 on watches, stalls, silent watches, resets, 5xx and 429
bursts with Retry-After) and stops when cleared."""

from __future__ import annotations

import asyncio
import json
import ssl
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from aiohttp import web
from noria_testbed.faultproxy import Fault, FaultProxy
from noria_testbed.pki import Pki, make_pki
from noria_testbed.processes import free_port

LIST_PATH = "/api/v1/namespaces/ns/configmaps"


class Upstream:
    """An HTTPS server in a thread: GET lists, ?watch=true streams an ADDED event every 50 ms."""

    def __init__(self, pki: Pki) -> None:
        self.pki, self.port = pki, free_port()
        self.url = f"https://127.0.0.1:{self.port}"
        self.hits = 0
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._run, daemon=True)

    async def _handler(self, request: web.Request) -> web.StreamResponse:
        self.hits += 1
        if request.method == "POST":
            body = await request.json()
            return web.json_response({"echo": body, "accept-encoding": request.headers.get("Accept-Encoding")},
                                     status=201)
        if request.query.get("watch") == "true":
            response = web.StreamResponse(headers={"Content-Type": "application/json"})
            await response.prepare(request)
            for n in range(int(request.query.get("events", "1000"))):
                event = {"type": "ADDED", "object": {"kind": "ConfigMap", "metadata": {"name": f"cm{n}",
                                                                                       "resourceVersion": str(n)}}}
                await response.write(json.dumps(event).encode() + b"\n")
                await asyncio.sleep(0.05)
            await response.write_eof()
            return response
        return web.json_response({"kind": "ConfigMapList", "metadata": {"resourceVersion": "7"}, "items": []},
                                 headers={"X-Upstream": "yes"})

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(str(self.pki.serving_cert), str(self.pki.serving_key))
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._handler)
        runner = web.AppRunner(app, access_log=None)
        self._loop.run_until_complete(runner.setup())
        self._loop.run_until_complete(web.TCPSite(runner, "127.0.0.1", self.port, ssl_context=context).start())
        self._loop.run_forever()

    def start(self) -> Upstream:
        self._thread.start()
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                httpx.get(self.url + LIST_PATH, timeout=1,
                          verify=ssl.create_default_context(cafile=str(self.pki.ca_cert)))
                return self
            except httpx.HTTPError:
                time.sleep(0.05)
        raise RuntimeError("upstream did not start")

    def stop(self) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="module")
def upstream(pki: Pki) -> Iterator[Upstream]:
    server = Upstream(pki).start()
    yield server
    server.stop()


@pytest.fixture
def proxy(pki: Pki, upstream: Upstream, tmp_path: Path) -> Iterator[FaultProxy]:
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(json.dumps({"apiVersion": "v1", "kind": "Config", "clusters": [
        {"name": "c", "cluster": {"server": upstream.url, "certificate-authority": str(pki.ca_cert)}}]}))
    upstream_ssl = ssl.create_default_context(cafile=str(pki.ca_cert))
    started = FaultProxy(upstream.url, upstream_ssl, pki.serving_cert, pki.serving_key,
                         client_kubeconfig=kubeconfig, workdir=tmp_path).start()
    yield started
    started.stop()


@pytest.fixture
def client(pki: Pki, proxy: FaultProxy) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=proxy.url, verify=ssl.create_default_context(cafile=str(pki.ca_cert)), timeout=httpx.Timeout(5.0)) as http:
        yield http


def watch_lines(client: httpx.Client, *, stop_after: int | None = None, events: int = 1000) -> list[dict]:
    lines: list[dict] = []
    with client.stream("GET", LIST_PATH, params={"watch": "true", "events": str(events)}) as response:
        assert response.status_code == 200
        for line in response.iter_lines():
            if line.strip():
                lines.append(json.loads(line))
            if stop_after is not None and len(lines) >= stop_after:
                break
    return lines


def test_requests_pass_through_unchanged_and_are_recorded(client: httpx.Client, proxy: FaultProxy,
                                                          upstream: Upstream) -> None:
    listing = client.get(LIST_PATH)
    assert listing.status_code == 200 and listing.json()["kind"] == "ConfigMapList"
    assert listing.headers["X-Upstream"] == "yes"
    created = client.post(LIST_PATH, json={"metadata": {"name": "x"}})
    assert created.status_code == 201 and created.json()["echo"] == {"metadata": {"name": "x"}}
    assert created.json()["accept-encoding"] == "identity"  # watch streams stay readable line by line
    events = watch_lines(client, events=3)
    assert [e["object"]["metadata"]["name"] for e in events] == ["cm0", "cm1", "cm2"]
    assert [(s.method, s.watch, s.outcome, s.status) for s in proxy.seen()] == [
        ("GET", False, "passed", 200), ("POST", False, "passed", 201), ("GET", True, "passed", 200)]


def test_the_kubeconfig_points_at_the_proxy_with_the_same_credentials(proxy: FaultProxy, upstream: Upstream) -> None:
    import yaml

    assert proxy.kubeconfig is not None
    config = yaml.safe_load(proxy.kubeconfig.read_text())
    assert config["clusters"][0]["cluster"]["server"] == proxy.url
    assert config["clusters"][0]["cluster"]["certificate-authority"].endswith("ca.crt")


def test_status_burst_answers_the_next_requests_with_retry_after_then_passes(client: httpx.Client,
                                                                             proxy: FaultProxy) -> None:
    proxy.inject(Fault.status(429, retry_after=2), count=2)
    first, second, third = (client.get(LIST_PATH) for _ in range(3))
    assert (first.status_code, second.status_code, third.status_code) == (429, 429, 200)
    assert first.headers["Retry-After"] == "2"
    assert first.json()["kind"] == "Status" and first.json()["code"] == 429
    proxy.inject(Fault.status(503), count=1)
    assert client.get(LIST_PATH).status_code == 503
    assert client.get(LIST_PATH).status_code == 200


def test_a_timed_fault_ends_by_itself(client: httpx.Client, proxy: FaultProxy) -> None:
    proxy.inject(Fault.status(500), duration=0.5)
    assert client.get(LIST_PATH).status_code == 500
    time.sleep(0.6)
    assert client.get(LIST_PATH).status_code == 200


def test_gone_answers_watches_with_an_error_event_of_code_410_and_leaves_other_requests(
        client: httpx.Client, proxy: FaultProxy) -> None:
    proxy.inject(Fault.gone(), count=1)
    assert client.get(LIST_PATH).status_code == 200  # not a watch: untouched, and the fault is not used up
    events = watch_lines(client)
    assert len(events) == 1 and events[0]["type"] == "ERROR" and events[0]["object"]["code"] == 410
    assert watch_lines(client, events=2)[0]["type"] == "ADDED"


def test_expire_watches_ends_an_open_watch_with_410_after_its_events(client: httpx.Client,
                                                                     proxy: FaultProxy) -> None:
    got: list[dict] = []

    def watch() -> None:
        got.extend(watch_lines(client))

    thread = threading.Thread(target=watch)
    thread.start()
    deadline = time.monotonic() + 5
    while (proxy.open_watches() == 0 or len(got) == 0) and time.monotonic() < deadline:
        time.sleep(0.02)
    time.sleep(0.2)
    assert proxy.expire_watches() == 1
    thread.join(5)
    assert not thread.is_alive()
    assert got[-1]["type"] == "ERROR" and got[-1]["object"]["code"] == 410
    assert len(got) >= 2 and all(e["type"] == "ADDED" for e in got[:-1])


def test_stall_accepts_and_never_answers_until_cleared(client: httpx.Client, proxy: FaultProxy) -> None:
    proxy.inject(Fault.stall())
    began = time.monotonic()
    with pytest.raises(httpx.ReadTimeout):
        client.get(LIST_PATH, timeout=httpx.Timeout(5.0, read=1.0))
    assert time.monotonic() - began >= 1.0
    errors: list[BaseException] = []

    def stalled() -> None:
        try:
            client.get(LIST_PATH, timeout=httpx.Timeout(10.0))
        except httpx.HTTPError as error:
            errors.append(error)

    thread = threading.Thread(target=stalled)
    thread.start()
    time.sleep(0.5)
    proxy.clear()  # the stalled request is dropped, never answered
    thread.join(5)
    assert len(errors) == 1 and isinstance(errors[0], httpx.TransportError)
    assert client.get(LIST_PATH).status_code == 200
    assert [s.outcome for s in proxy.seen()][:2] == ["stall", "stall"]


def test_a_stall_silences_open_watches_and_ends_them_when_over(client: httpx.Client, proxy: FaultProxy) -> None:
    got: list[tuple[float, dict]] = []
    ended: list[str] = []

    def watch() -> None:
        try:
            with client.stream("GET", LIST_PATH, params={"watch": "true"},
                               timeout=httpx.Timeout(10.0, read=10.0)) as response:
                for line in response.iter_lines():
                    if line.strip():
                        got.append((time.monotonic(), json.loads(line)))
            ended.append("closed")
        except httpx.HTTPError as error:
            ended.append(type(error).__name__)

    thread = threading.Thread(target=watch)
    thread.start()
    deadline = time.monotonic() + 5
    while len(got) < 2 and time.monotonic() < deadline:
        time.sleep(0.02)
    silenced_at = time.monotonic()
    proxy.inject(Fault.stall(), duration=1.5)
    thread.join(6)
    assert not thread.is_alive() and ended
    during = [e for at, e in got if silenced_at + 0.2 < at]
    assert not during, f"{len(during)} events through a silent watch"
    assert ended[0] != "closed" or got[-1][1]["type"] != "ERROR"  # ends like a dead connection, no goodbye


def test_reset_closes_the_connection_without_an_answer(client: httpx.Client, proxy: FaultProxy) -> None:
    proxy.inject(Fault.reset(), count=1)
    with pytest.raises(httpx.TransportError):
        client.get(LIST_PATH)
    assert client.get(LIST_PATH).status_code == 200


def test_reset_connections_breaks_open_watches(client: httpx.Client, proxy: FaultProxy) -> None:
    outcome: list[str] = []

    def watch() -> None:
        try:
            watch_lines(client)
            outcome.append("ended cleanly")
        except httpx.HTTPError as error:
            outcome.append(type(error).__name__)

    thread = threading.Thread(target=watch)
    thread.start()
    deadline = time.monotonic() + 5
    while proxy.open_watches() == 0 and time.monotonic() < deadline:
        time.sleep(0.02)
    time.sleep(0.2)
    assert proxy.reset_connections() == 1
    thread.join(5)
    assert outcome and outcome[0] != "ended cleanly"


def test_only_watch_or_only_request_faults_leave_the_other_kind_alone(client: httpx.Client,
                                                                      proxy: FaultProxy) -> None:
    proxy.inject(Fault.status(500, only="watch"), count=1)
    assert client.get(LIST_PATH).status_code == 200
    with client.stream("GET", LIST_PATH, params={"watch": "true"}) as response:
        assert response.status_code == 500
    proxy.inject(Fault.status(503, only="request"), count=1)
    assert watch_lines(client, events=1)[0]["type"] == "ADDED"
    assert client.get(LIST_PATH).status_code == 503

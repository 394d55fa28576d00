"""The local test bed runs real workloads: a real control plane, Noria's node agent running
pods as local processes, Prometheus discovering them, and the operator starting against it."""

from __future__ import annotations

import ipaddress
import json
import os
import signal
import socket
import subprocess
import sys
import time

import pytest
from noria_testbed.processes import ProcessExited, detach_and_die_with_parent, free_port, urlopen, wait_until

pytestmark = pytest.mark.integration

HTTP_DEPLOYMENT = """
apiVersion: apps/v1
kind: Deployment
metadata: {name: web, labels: {app: web}}
spec:
  replicas: 2
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web, noria.dev/version: v7}}
    spec:
      automountServiceAccountToken: false
      terminationGracePeriodSeconds: 3
      containers:
      - name: http
        image: python:3.11-slim
        # http.server, serving extension-less files such as /metrics as the Prometheus text format
        # (Prometheus 3 refuses to scrape an unknown Content-Type).
        command: [python, -c, "import functools, os, sys, http.server as s; s.SimpleHTTPRequestHandler.extensions_map[''] = 'text/plain; version=0.0.4'; s.ThreadingHTTPServer((os.environ['POD_IP'], 8000), functools.partial(s.SimpleHTTPRequestHandler, directory=sys.argv[1])).serve_forever()", /srv/www]
        env:
        - {name: POD_IP, valueFrom: {fieldRef: {fieldPath: status.podIP}}}
        ports: [{name: http, containerPort: 8000}]
        readinessProbe: {httpGet: {path: /, port: http}, periodSeconds: 1}
        volumeMounts: [{name: www, mountPath: /srv/www}]
      volumes:
      - name: www
        configMap: {name: www}
---
apiVersion: v1
kind: ConfigMap
metadata: {name: www}
data:
  index.html: hello from the testbed
  metrics: |
    # TYPE testbed_answer gauge
    testbed_answer 42
---
apiVersion: v1
kind: Service
metadata: {name: web}
spec:
  selector: {app: web}
  ports: [{name: http, port: 80, targetPort: http}]
"""


def job(name: str, code: str, *, extra_spec: str = "") -> str:
    return f"""
apiVersion: batch/v1
kind: Job
metadata: {{name: {name}}}
spec:
  backoffLimit: 0
  template:
    spec:
      restartPolicy: Never
      automountServiceAccountToken: false
      containers:
      - name: main
        image: python:3.11-slim
        command: [python, -c, {json.dumps(code)}]
        args: [/dev/termination-log]
{extra_spec}"""


def pods(cluster, namespace: str, selector: str) -> list[dict]:
    out = cluster.kubectl("get", "pods", "-n", namespace, "-l", selector, "-o", "json").stdout
    return json.loads(out)["items"]


def http_get(url: str) -> str:
    with urlopen(url, timeout=5) as response:
        return response.read().decode()


def test_apiserver_is_ready(cluster):
    assert cluster.kubectl("get", "--raw", "/readyz").stdout == "ok"
    nodes = json.loads(cluster.kubectl("get", "nodes", "-o", "json").stdout)["items"]
    assert [n["metadata"]["name"] for n in nodes] == ["noria-local"]


def test_deployment_becomes_available_and_its_service_reaches_the_pods(cluster, namespace):
    started = time.monotonic()
    cluster.kubectl("apply", "-n", namespace, "-f", "-", input=HTTP_DEPLOYMENT)
    cluster.kubectl("wait", "-n", namespace, "--for=condition=Available", "deployment/web", "--timeout=90s")
    available_after = time.monotonic() - started
    print(f"deployment Available after {available_after:.1f}s")

    running = pods(cluster, namespace, "app=web")
    ips = sorted(p["status"]["podIP"] for p in running)
    assert len(ips) == 2 and len(set(ips)) == 2
    assert all(ipaddress.ip_address(ip) in ipaddress.ip_network(cluster.pod_cidr) for ip in ips)
    for ip in ips:  # each replica is a real process listening on its own pod address
        assert http_get(f"http://{ip}:8000/index.html") == "hello from the testbed"
    statuses = [p["status"]["containerStatuses"][0] for p in running]
    assert all(s["ready"] and s["started"] and "running" in s["state"] for s in statuses)

    # The Service's ClusterIP (a loopback address here) forwards to the ready pods.
    cluster_ip = cluster.kubectl("get", "service", "web", "-n", namespace, "-o", "jsonpath={.spec.clusterIP}").stdout
    assert ipaddress.ip_address(cluster_ip) in ipaddress.ip_network(cluster.service_cidr)
    assert http_get(f"http://{cluster_ip}:80/index.html") == "hello from the testbed"


def test_job_completes_and_its_termination_message_is_in_the_pod_status(cluster, namespace):
    code = "import sys; open(sys.argv[1], 'w').write('trained: f1=0.83'); print('bye')"
    cluster.kubectl("apply", "-n", namespace, "-f", "-", input=job("ok", code))
    cluster.kubectl("wait", "-n", namespace, "--for=condition=Complete", "job/ok", "--timeout=60s")

    [pod] = pods(cluster, namespace, "job-name=ok")
    assert pod["status"]["phase"] == "Succeeded"
    terminated = pod["status"]["containerStatuses"][0]["state"]["terminated"]
    assert terminated["exitCode"] == 0
    assert terminated["message"] == "trained: f1=0.83"
    assert "bye" in cluster.node_agent.pod_log(namespace, pod["metadata"]["name"])


def test_failing_job_is_failed_with_exit_code_and_message(cluster, namespace):
    code = "import sys; open(sys.argv[1], 'w').write('no data in window'); sys.exit(3)"
    cluster.kubectl("apply", "-n", namespace, "-f", "-", input=job("bad", code))
    cluster.kubectl("wait", "-n", namespace, "--for=condition=Failed", "job/bad", "--timeout=60s")

    [pod] = pods(cluster, namespace, "job-name=bad")
    assert pod["status"]["phase"] == "Failed"
    terminated = pod["status"]["containerStatuses"][0]["state"]["terminated"]
    assert (terminated["exitCode"], terminated["reason"], terminated["message"]) == (3, "Error", "no data in window")


def test_claim_noria_store_is_the_testbed_store_dir(cluster, namespace):
    """Paths under the store's mount (also as file:// URIs, also through a subPath mount) land in
    store_dir, and a /tmp volume becomes the process's TMPDIR, as the operator's pods expect."""
    claim = """
apiVersion: v1
kind: PersistentVolumeClaim
metadata: {name: noria-store}
spec: {accessModes: [ReadWriteMany], resources: {requests: {storage: 1Gi}}}
"""
    code = ("import os, sys, tempfile, urllib.parse; path = urllib.parse.urlparse(os.environ['OUT']).path; "
            "open(path, 'w').write('prediction log'); "
            "assert tempfile.gettempdir() == sys.argv[2], (tempfile.gettempdir(), sys.argv[2])")
    logs = f"/var/lib/noria/store/{namespace}/p/predictions"
    spec = f"""        env: [{{name: OUT, value: "file://{logs}/v1.jsonl"}}]
        volumeMounts:
        - {{name: store, mountPath: /var/lib/noria/store, readOnly: true}}
        - {{name: store-logs, mountPath: {logs}, subPath: {namespace}/p/predictions}}
        - {{name: tmp, mountPath: /tmp}}
      volumes:
      - {{name: store, persistentVolumeClaim: {{claimName: noria-store, readOnly: true}}}}
      - {{name: store-logs, persistentVolumeClaim: {{claimName: noria-store}}}}
      - {{name: tmp, emptyDir: {{}}}}
"""
    manifest = job("writer", code, extra_spec=spec).replace("args: [/dev/termination-log]",
                                                            "args: [/dev/termination-log, /tmp]")
    cluster.kubectl("apply", "-n", namespace, "-f", "-", input=claim + "---" + manifest)
    cluster.kubectl("wait", "-n", namespace, "--for=condition=Complete", "job/writer", "--timeout=60s")
    assert (cluster.store_dir / namespace / "p" / "predictions" / "v1.jsonl").read_text() == "prediction log"
    phase = cluster.kubectl("get", "pvc", "noria-store", "-n", namespace, "-o", "jsonpath={.status.phase}").stdout
    assert phase == "Bound"


def test_scaling_a_deployment_down_stops_its_processes(cluster, namespace):
    cluster.kubectl("apply", "-n", namespace, "-f", "-", input=HTTP_DEPLOYMENT)
    cluster.kubectl("wait", "-n", namespace, "--for=condition=Available", "deployment/web", "--timeout=90s")
    pids = [int(p["status"]["containerStatuses"][0]["containerID"].removeprefix("noria://"))
            for p in pods(cluster, namespace, "app=web")]
    assert len(pids) == 2 and all(_alive(pid) for pid in pids)

    cluster.kubectl("scale", "-n", namespace, "deployment/web", "--replicas=0")
    wait_until("pods of web gone", lambda: not pods(cluster, namespace, "app=web"), timeout=30)
    assert not any(_alive(pid) for pid in pids)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie not yet reaped by the agent is not running either
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().split(")")[-1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def test_promtool_accepts_the_testbed_prometheus_config(prometheus):
    result = subprocess.run([str(prometheus.binaries.promtool), "check", "config", str(prometheus.config_path)],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_prometheus_discovers_pods_with_their_labels(cluster, prometheus, namespace):
    # Scraped as the chart's PodMonitor scrapes (noria.scrape): model servers and routers, port http.
    cluster.kubectl("apply", "-n", namespace, "-f", "-", input=HTTP_DEPLOYMENT.replace(
        "noria.dev/version: v7}", "noria.dev/version: v7, noria.dev/component: server}"))
    cluster.kubectl("wait", "-n", namespace, "--for=condition=Available", "deployment/web", "--timeout=90s")
    names = sorted(p["metadata"]["name"] for p in pods(cluster, namespace, "app=web"))

    def scraped() -> bool:
        series = prometheus.query(f'testbed_answer{{namespace="{namespace}"}}')
        return sorted(s["metric"]["pod"] for s in series) == names

    wait_until("both pods scraped", scraped, timeout=30)
    [up, *_] = prometheus.query(f'up{{namespace="{namespace}", pod="{names[0]}"}}')
    assert up["value"][1] == "1"
    assert up["metric"]["noria_dev_version"] == "v7" and up["metric"]["noria_dev_component"] == "server"
    assert "app" not in up["metric"]  # only the PodMonitor's podTargetLabels become series labels
    assert up["metric"]["container"] == "http"


def test_prometheus_scrapes_a_process_outside_the_cluster_once_asked(prometheus, tmp_path):
    (tmp_path / "metrics").write_text("# TYPE outside_answer gauge\noutside_answer 7\n")
    port = free_port()
    serve = ("import functools, sys, http.server as s; "  # /metrics as the text format, which Prometheus 3 requires
             "s.SimpleHTTPRequestHandler.extensions_map[''] = 'text/plain; version=0.0.4'; "
             "s.ThreadingHTTPServer(('127.0.0.1', int(sys.argv[1])), "
             "functools.partial(s.SimpleHTTPRequestHandler, directory=sys.argv[2])).serve_forever()")
    server = subprocess.Popen([sys.executable, "-c", serve, str(port), str(tmp_path)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        prometheus.scrape("outside", f"127.0.0.1:{port}")
        wait_until("outside_answer scraped", lambda: [s["value"][1] for s in prometheus.query(
            'outside_answer{job="outside"}')] == ["7"], timeout=20)
        result = subprocess.run([str(prometheus.binaries.promtool), "check", "config", str(prometheus.config_path)],
                                capture_output=True, text=True)
        assert result.returncode == 0, result.stdout + result.stderr
    finally:
        prometheus.scrape("outside")
        server.terminate()
        server.wait()


def test_operator_starts_against_the_cluster_and_answers_liveness(cluster):
    port = free_port()
    env = {**cluster.env, "PYTHONUNBUFFERED": "1"}
    log_path = cluster.log_dir / "operator-liveness-test.log"
    with open(log_path, "wb") as log_file:
        operator = subprocess.Popen([sys.executable, "-m", "noria", "--liveness", f"http://127.0.0.1:{port}/healthz"],
                                    env=env, stdout=log_file, stderr=subprocess.STDOUT,
                                    preexec_fn=detach_and_die_with_parent)  # no orphan if pytest is killed
    try:
        def live() -> bool:
            assert operator.poll() is None, f"operator exited: {log_path.read_text()[-3000:]}"
            with urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2) as response:
                return response.status == 200

        wait_until("operator liveness 200", live, timeout=60, on_timeout=lambda: log_path.read_text()[-3000:])
    finally:
        os.killpg(operator.pid, signal.SIGTERM)
        try:
            operator.wait(15)
        except subprocess.TimeoutExpired:
            os.killpg(operator.pid, signal.SIGKILL)
            operator.wait()


def test_config_map_volume_follows_updates(cluster, namespace):
    cluster.kubectl("apply", "-n", namespace, "-f", "-", input=HTTP_DEPLOYMENT.replace("replicas: 2", "replicas: 1"))
    cluster.kubectl("wait", "-n", namespace, "--for=condition=Available", "deployment/web", "--timeout=90s")
    [pod] = pods(cluster, namespace, "app=web")
    url = f"http://{pod['status']['podIP']}:8000/index.html"
    assert http_get(url) == "hello from the testbed"

    cluster.kubectl("patch", "-n", namespace, "configmap/www", "--type=merge", "-p", '{"data": {"index.html": "v2"}}')
    wait_until("the mounted file shows the update", lambda: http_get(url) == "v2", timeout=10)


def test_crashing_container_is_restarted_with_backoff(cluster, namespace):
    manifest = """
apiVersion: v1
kind: Pod
metadata: {name: crasher}
spec:
  automountServiceAccountToken: false
  initContainers:
  - name: prepare
    image: busybox
    command: [python, -c, "import sys; open(sys.argv[1] + '/greeting', 'w').write('prepared')", /work]
    volumeMounts: [{name: work, mountPath: /work}]
  containers:
  - name: main
    image: busybox
    command: [python, -c, "import sys; print(open('/work/greeting').read()); sys.exit(2)"]
    terminationMessagePolicy: FallbackToLogsOnError
    volumeMounts: [{name: work, mountPath: /work}]
  volumes: [{name: work, emptyDir: {}}]
"""
    cluster.kubectl("apply", "-n", namespace, "-f", "-", input=manifest)

    def restarted() -> bool:
        status = json.loads(cluster.kubectl("get", "pod", "crasher", "-n", namespace, "-o", "json").stdout)["status"]
        main = status["containerStatuses"][0]
        return main["restartCount"] >= 1 and "terminated" in main.get("lastState", {})

    wait_until("main container restarted", restarted, timeout=30)
    status = json.loads(cluster.kubectl("get", "pod", "crasher", "-n", namespace, "-o", "json").stdout)["status"]
    assert status["phase"] == "Running"  # restartPolicy Always: never terminal
    assert status["initContainerStatuses"][0]["state"]["terminated"]["exitCode"] == 0
    last = status["containerStatuses"][0]["lastState"]["terminated"]
    assert last["exitCode"] == 2
    assert "prepared" in last["message"]  # FallbackToLogsOnError: the log tail, which read the init container's file
    assert cluster.node_agent.pod_log(namespace, "crasher").count("prepared") >= 2
    events = json.loads(cluster.kubectl("get", "events", "-n", namespace, "-o", "json").stdout)["items"]
    reasons = {e["reason"] for e in events if e["involvedObject"]["name"] == "crasher"}
    assert {"Started", "BackOff"} <= reasons, reasons


def test_kubectl_logs_reads_the_container_log(cluster, namespace):
    cluster.kubectl("run", "talker", "-n", namespace, "--image=none", "--restart=Never", "--command", "--",
                    "python", "-c", "print('line one'); print('line two')")
    cluster.kubectl("wait", "-n", namespace, "--for=jsonpath={.status.phase}=Succeeded", "pod/talker", "--timeout=60s")
    assert cluster.kubectl("logs", "-n", namespace, "talker").stdout == "line one\nline two\n"
    assert cluster.kubectl("logs", "-n", namespace, "talker", "--tail=1").stdout == "line two\n"
    assert cluster.kubectl("logs", "-f", "-n", namespace, "talker", timeout=20).stdout == "line one\nline two\n"


def test_stopping_a_testbed_leaves_no_process_or_workdir_behind(cluster):
    """A second, private test bed (the session's `cluster` only provides the binaries' check)."""
    from noria_testbed import LocalTestbed

    testbed = LocalTestbed(apply_crds=False)
    try:
        testbed.start()
        testbed.kubectl("run", "sleeper", "--image=none", "--restart=Never", "--command", "--",
                        "python", "-c", "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(600)")
        testbed.kubectl("wait", "--for=condition=Ready", "pod/sleeper", "--timeout=60s")
        pod = json.loads(testbed.kubectl("get", "pod", "sleeper", "-o", "json").stdout)
        pids = [int(pod["status"]["containerStatuses"][0]["containerID"].removeprefix("noria://"))]
        pids += [p.pid for p in testbed.control_plane.processes.values()]
        assert testbed.node_agent is not None
        pids.append(testbed.node_agent.process.pid)
        assert all(_alive(pid) for pid in pids)
    finally:
        testbed.stop()
    assert not any(_alive(pid) for pid in pids)  # including a pod that ignores SIGTERM
    assert not testbed.workdir.exists()


def test_failing_liveness_probe_restarts_the_container(cluster, namespace):
    manifest = """
apiVersion: v1
kind: Pod
metadata: {name: hung}
spec:
  automountServiceAccountToken: false
  terminationGracePeriodSeconds: 1
  containers:
  - name: main
    image: none
    command: [python, -c, "import time; time.sleep(600)"]
    ports: [{name: http, containerPort: 8000}]
    livenessProbe: {httpGet: {path: /, port: http}, periodSeconds: 1, failureThreshold: 2}
"""
    cluster.kubectl("apply", "-n", namespace, "-f", "-", input=manifest)

    def restarted() -> bool:
        status = json.loads(cluster.kubectl("get", "pod", "hung", "-n", namespace, "-o", "json").stdout)["status"]
        return status.get("containerStatuses", [{}])[0].get("restartCount", 0) >= 1

    wait_until("container restarted by its liveness probe", restarted, timeout=30)
    events = json.loads(cluster.kubectl("get", "events", "-n", namespace, "-o", "json").stdout)["items"]
    assert any(e["reason"] == "Unhealthy" and "Liveness" in e["message"] for e in events)


def test_paths_inside_config_map_files_are_rewritten_too(cluster, namespace):
    """The trainer's run spec is a ConfigMap file naming store URIs; they must reach store_dir."""
    manifest = f"""
apiVersion: v1
kind: ConfigMap
metadata: {{name: run}}
data:
  spec.json: '{{"output": "file:///var/lib/noria/store/{namespace}/run/out.txt"}}'
---
apiVersion: v1
kind: PersistentVolumeClaim
metadata: {{name: noria-store}}
spec: {{accessModes: [ReadWriteMany], resources: {{requests: {{storage: 1Gi}}}}}}
---
""" + job("reader", "import json, sys, urllib.parse; spec = json.load(open(sys.argv[2])); "
                    "open(urllib.parse.urlparse(spec['output']).path, 'w').write('from the spec')",
          extra_spec="""        volumeMounts:
        - {name: run, mountPath: /etc/noria/run, readOnly: true}
        - {name: store, mountPath: /var/lib/noria/store}
      volumes:
      - {name: run, configMap: {name: run}}
      - {name: store, persistentVolumeClaim: {claimName: noria-store}}
""").replace("args: [/dev/termination-log]", "args: [/dev/termination-log, /etc/noria/run/spec.json]")
    (cluster.store_dir / namespace / "run").mkdir(parents=True)
    cluster.kubectl("apply", "-n", namespace, "-f", "-", input=manifest)
    cluster.kubectl("wait", "-n", namespace, "--for=condition=Complete", "job/reader", "--timeout=60s")
    assert (cluster.store_dir / namespace / "run" / "out.txt").read_text() == "from the spec"


def test_an_operator_whose_liveness_port_was_taken_starts_again_on_another(cluster, namespace, operator_factory):
    """``free_port`` only says a port is free now: another process can take it before the operator binds it.
    The operator's start then moves to fresh ports, and with no attempt left it fails at once, saying so,
    rather than waiting out its liveness timeout; and it never picks its own metrics port for liveness (CI
    did once: 'address already in use')."""
    operator = operator_factory(namespace)
    operator.kill()
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        started = time.monotonic()
        with pytest.raises(ProcessExited, match="address already in use"):
            operator.start(liveness_port=port, attempts=1)
        assert time.monotonic() - started < 30, "a start that cannot bind must fail when the process exits"
        assert operator.port_clashed()
        before = operator.starts
        operator.start(liveness_port=port)
    assert operator.starts == before + 2  # the clash, then a start on a fresh port
    assert not operator.port_clashed()
    assert f"127.0.0.1', {port})" in operator.log().rpartition("operator start #")[0]
    with urlopen(operator.metrics_url, timeout=5) as response:
        assert response.status == 200

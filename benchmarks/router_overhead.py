"""What the Noria router costs: latency added at a fixed rate, and throughput vs calling the server directly.

    .venv/bin/python benchmarks/router_overhead.py [--rate 500 --rate-seconds 15 --seconds 10 --runs 3]

Three model servers (the same LogisticRegression Pipeline trained with three seeds) and the
router run on CPU 1; the load generators run on CPU 0. Measured in one run:
- latency added at a fixed, open-loop 500 req/s (aiohttp generator): direct vs through the router;
- maximum throughput (wrk, 16 connections): direct, router 100/0, router 90/10, router 90/10 with
  100% shadow mirroring;
- for context, the same 90/10 split (and split + mirror) done by nginx (Debian; ``split_clients``
  on ``$request_id``, ``mirror``, upstream keepalive), one worker on CPU 1.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from noria.router_config import Backend, RouterConfig  # noqa: E402
from noria_server.launch import free_port  # noqa: E402
from noria_server.reference_models import train_and_save  # noqa: E402
from serving_bench import fixed_rate, measure, require_wrk, stop, taskset, uptime, wait_http  # noqa: E402

BODY = json.dumps({"inputs": [{"name": "input-0", "shape": [1, 20], "datatype": "FP64",
                               "data": [[round(0.1 * i - 1.0, 3) for i in range(20)]]}]}).encode()


def start(cmd: list[str], log: Path) -> subprocess.Popen:
    with open(log, "ab") as f:
        return subprocess.Popen([*taskset("1"), *cmd], stdout=f, stderr=subprocess.STDOUT, start_new_session=True)


def router_config(urls: dict[str, str], weights: dict[str, int], shadow: str | None) -> dict:
    """The router's config (noria.router_config, the type the operator writes) with direct URLs."""
    backends = tuple(Backend(v, None, 8080, weight=w, url=urls[v]) for v, w in weights.items())
    mirrored = None if shadow is None else Backend(shadow, None, 8080, url=urls[shadow], mirror_percent=100)
    return RouterConfig("churn", "bench", backends, mirrored).to_json()


def write_config(path: Path, config: dict) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(config))
    os.replace(tmp, path)
    time.sleep(0.6)  # the router polls every 250 ms


def nginx_conf(work: Path, ports: dict[str, int], split_port: int, mirror_port: int) -> Path:
    upstreams = "\n".join(f"  upstream {v.replace('-', '_')} {{ server 127.0.0.1:{p}; keepalive 64; }}"
                          for v, p in ports.items())
    proxy = "proxy_http_version 1.1; proxy_set_header Connection \"\";"
    conf = f"""
worker_processes 1;
daemon off;
pid {work}/nginx.pid;
error_log {work}/nginx-error.log warn;
events {{ worker_connections 4096; }}
http {{
  access_log off;
  client_body_temp_path {work}/nginx-body;
  proxy_temp_path {work}/nginx-proxy;
  fastcgi_temp_path {work}/nginx-fastcgi;
  uwsgi_temp_path {work}/nginx-uwsgi;
  scgi_temp_path {work}/nginx-scgi;
{upstreams}
  split_clients "${{request_id}}" $backend {{ 90% churn_v1; * churn_v2; }}
  server {{
    listen 127.0.0.1:{split_port};
    location / {{ proxy_pass http://$backend; {proxy} }}
  }}
  server {{
    listen 127.0.0.1:{mirror_port};
    location / {{ mirror /mirror; mirror_request_body on; proxy_pass http://$backend; {proxy} }}
    location = /mirror {{ internal; proxy_pass http://churn_v3$request_uri; {proxy} }}
  }}
}}
"""
    path = work / "nginx.conf"
    path.write_text(conf)
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rate", type=float, default=500)
    parser.add_argument("--rate-seconds", type=float, default=15)
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--warmup", type=float, default=5)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--skip-throughput", action="store_true", help="only the fixed-rate latency part")
    args = parser.parse_args()
    require_wrk()
    if hasattr(os, "sched_setaffinity") and (os.cpu_count() or 1) >= 2:
        os.sched_setaffinity(0, {0})  # the fixed-rate generator runs in this process
    load_before = uptime()
    work = Path(tempfile.mkdtemp(prefix="noria-router-bench-"))
    procs: list[subprocess.Popen] = []
    try:
        urls, ports = {}, {}
        for i, version in enumerate(("churn-v1", "churn-v2", "churn-v3")):
            saved = train_and_save("logistic", str(work / version), rows=3000, seed=i)
            port = ports[version] = free_port()
            urls[version] = f"http://127.0.0.1:{port}"
            procs.append(start([sys.executable, "-m", "noria_server", "serve", "--artifact", saved.artifact_uri,
                                "--digest", saved.digest, "--profile", saved.profile_uri, "--model", "churn",
                                "--version", version, "--host", "127.0.0.1", "--port", str(port),
                                "--drain-seconds", "0"], work / f"{version}.log"))
        config_path = work / "router.json"
        config_path.write_text(json.dumps(router_config(urls, {"churn-v1": 100, "churn-v2": 0}, None)))
        router_port = free_port()
        procs.append(start([sys.executable, "-m", "noria_server", "route", "--config", str(config_path),
                            "--host", "127.0.0.1", "--port", str(router_port), "--drain-seconds", "0"],
                           work / "router.log"))
        for url in [*urls.values(), f"http://127.0.0.1:{router_port}"]:
            wait_http(url + "/v2/health/ready", 180)
        direct = urls["churn-v1"] + "/v2/models/churn/infer"
        routed = f"http://127.0.0.1:{router_port}/v2/models/churn/infer"

        print(f"fixed rate {args.rate:g} req/s for {args.rate_seconds:g}s ...", flush=True)
        fixed_rate(direct, BODY, args.rate, 3)
        fixed_rate(routed, BODY, args.rate, 3)
        d50, d99 = fixed_rate(direct, BODY, args.rate, args.rate_seconds)
        r50, r99 = fixed_rate(routed, BODY, args.rate, args.rate_seconds)

        print(f"\n## Router overhead at a fixed {args.rate:g} req/s (open loop, {args.rate_seconds:g}s, aiohttp "
              "generator on CPU 0)")
        print(f"{'path':28} {'p50 ms':>8} {'p99 ms':>8}")
        print(f"{'direct':28} {d50:8.2f} {d99:8.2f}")
        print(f"{'through the router':28} {r50:8.2f} {r99:8.2f}")
        print(f"{'added by the router':28} {r50 - d50:8.2f} {r99 - d99:8.2f}   (targets: p50 < 1 ms, p99 < 3 ms)",
              flush=True)
        if args.skip_throughput:
            print(f"Load before: {load_before}\nLoad after:  {uptime()}")
            return
        results = {}
        print("max throughput ...", flush=True)
        results["direct to the server"] = measure(direct, BODY, args.connections, args.warmup, args.seconds, args.runs)
        results["router, one backend (100/0)"] = measure(routed, BODY, args.connections, args.warmup, args.seconds,
                                                         args.runs)
        write_config(config_path, router_config(urls, {"churn-v1": 90, "churn-v2": 10}, None))
        results["router, 90/10 split"] = measure(routed, BODY, args.connections, args.warmup, args.seconds, args.runs)
        write_config(config_path, router_config(urls, {"churn-v1": 90, "churn-v2": 10}, "churn-v3"))
        results["router, 90/10 + 100% shadow"] = measure(routed, BODY, args.connections, args.warmup, args.seconds,
                                                         args.runs)
        nginx = shutil.which("nginx") or ("/usr/sbin/nginx" if os.path.exists("/usr/sbin/nginx") else None)
        if nginx:
            split_port, mirror_port = free_port(), free_port()
            conf = nginx_conf(work, ports, split_port, mirror_port)
            procs.append(start([nginx, "-p", str(work), "-c", str(conf)], work / "nginx.log"))
            wait_http(f"http://127.0.0.1:{split_port}/v2/health/ready", 30)
            results["nginx, 90/10 split_clients"] = measure(f"http://127.0.0.1:{split_port}/v2/models/churn/infer",
                                                            BODY, args.connections, args.warmup, args.seconds,
                                                            args.runs)
            results["nginx, 90/10 + 100% mirror"] = measure(f"http://127.0.0.1:{mirror_port}/v2/models/churn/infer",
                                                            BODY, args.connections, args.warmup, args.seconds,
                                                            args.runs)
        else:
            print("nginx not found: `apt-get install -y nginx` for the native-code reference")

        base = results["direct to the server"].rps
        print(f"\n## Maximum throughput (wrk -t1 -c{args.connections} on CPU 0; servers, router and nginx on CPU 1; "
              f"{args.warmup:g}s warm-up + median of {args.runs} x {args.seconds:g}s)")
        print(f"{'path':32} {'req/s':>9} {'p50 ms':>8} {'p99 ms':>8} {'vs direct':>10}")
        for name, r in results.items():
            print(f"{name:32} {r.rps:9.0f} {r.p50_ms:8.2f} {r.p99_ms:8.2f} {r.rps / base:9.2f}x"
                  + (f"  ({r.errors} errors)" if r.errors else ""))
        print("\nConfigurations: 3 x `python -m noria_server serve` (LogisticRegression Pipeline, 20 features, "
              "defaults, no store) + `python -m noria_server route --config` (aiohttp client, keep-alive), all "
              "taskset -c 1; nginx 1 worker, upstream keepalive 64, taskset -c 1. Same single-row OIP v2 body.")
        print(f"Load before: {load_before}")
        print(f"Load after:  {uptime()}")
    finally:
        for proc in reversed(procs):
            stop(proc)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()

"""Helpers of the ``s3://`` integration tests: the test bed's S3 server (SeaweedFS, noria_testbed.s3),
the Secret a pipeline or Rollout names, and the store read and written through the S3 API directly
(s3fs, with the server's own credentials), never through Noria's code."""

from __future__ import annotations

import hashlib
import io
import json
import time
from typing import Any

import pandas as pd
import pytest
from unavailable import unavailable

SECRET = "noria-s3"  # the Secret spec.store.s3.credentialsSecret names in these tests
FEATURES = ["x1", "x2"]  # the feature columns of training_helpers.classification_frame


@pytest.fixture(scope="session")
def s3(cluster):  # noqa: ANN001, ANN201 - noria_testbed.s3.SeaweedS3
    """The test bed's S3 server, started on first use (skipped when ``weed`` cannot be built, a
    failure under CI)."""
    from noria_testbed.s3 import SeaweedUnavailable

    try:
        return cluster.start_s3()
    except SeaweedUnavailable as error:
        unavailable(f"SeaweedFS unavailable: {error}")


def filesystem(server) -> Any:  # noqa: ANN001, ANN401 - s3fs.S3FileSystem
    """The server's store through s3fs, with no listing cache (tests look for objects that appear)."""
    import s3fs
    from noria_testbed.s3 import REGION

    return s3fs.S3FileSystem(
        key=server.access_key_id,
        secret=server.secret_access_key,
        endpoint_url=server.endpoint,
        client_kwargs={"region_name": REGION},
        use_listings_cache=False,
        skip_instance_cache=True,
    )


def store_access(server, secret: str = SECRET) -> dict:  # noqa: ANN001
    """``spec.store`` of a pipeline or Rollout on this server."""
    from noria_testbed.s3 import REGION

    return {"s3": {"endpoint": server.endpoint, "region": REGION, "credentialsSecret": secret}}


def apply(cluster, namespace: str, manifest: str) -> None:  # noqa: ANN001
    """``kubectl apply`` of a manifest in ``namespace``, through stdin."""
    cluster.kubectl("apply", "-n", namespace, "-f", "-", input=manifest)


def create_secret(cluster, namespace: str, data: dict[str, str], name: str = SECRET) -> None:  # noqa: ANN001
    """The credentials Secret (through stdin, so the keys are on no command line)."""
    secret = {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": name},
        "type": "Opaque",
        "stringData": data,
    }
    apply(cluster, namespace, json.dumps(secret))


def operator_env(server) -> dict[str, str]:  # noqa: ANN001
    """The operator on the s3 store: pods and the operator see the same root (nothing to rewrite),
    and the operator's own access is the standard AWS variables (its pod's env in a cluster)."""
    return {"NORIA_STORE_ROOT": server.store_root, "NORIA_LOCAL_STORE_ROOT": "", **server.client_env()}


def write_data(fs, server, namespace: str, name: str, frame: pd.DataFrame, part: int = 0) -> str:  # noqa: ANN001
    """One parquet partition under the shared ``datasets/`` prefix (one PUT: complete or absent);
    the data source URI."""
    buffer = io.BytesIO()
    frame.to_parquet(buffer, index=False)
    folder = f"{server.store_root}/datasets/{namespace}/{name}"
    fs.pipe(f"{folder}/part-{part}.parquet", buffer.getvalue())
    return f"{folder}/"


def sha256_of(fs, uri: str) -> str:  # noqa: ANN001
    return "sha256:" + hashlib.sha256(fs.cat(uri)).hexdigest()


def keys_under(fs, prefix: str) -> list[str]:  # noqa: ANN001
    """Every object key under ``prefix`` (``bucket/...``), hidden and temporary ones included."""
    return sorted(fs.find(prefix.removeprefix("s3://"), withdirs=False))


def jsonl_rows(fs, prefix: str) -> list[dict]:  # noqa: ANN001
    """Every row of every ``.jsonl`` object under ``prefix``."""
    rows: list[dict] = []
    for key in keys_under(fs, prefix):
        if key.endswith(".jsonl"):
            rows += [json.loads(line) for line in fs.cat(key).decode().splitlines() if line.strip()]
    return rows


def infer_and_label(url: str, model: str, frame: pd.DataFrame, features: list[str]) -> tuple[int, int]:
    """One request per row (and its true label as feedback); (predictions answered, labels accepted)."""
    import httpx
    from noria_server import oip

    answered = labelled = 0
    with httpx.Client(timeout=10.0) as client:
        for row in frame.itertuples(index=False):
            values = [float(getattr(row, f)) for f in features]
            body = {
                "inputs": [{"name": "input", "shape": [1, len(values)], "datatype": "FP64", "data": [values]}]
            }
            response = client.post(f"{url}/v2/models/{model}/infer", json=body)
            if response.status_code != 200:
                continue
            answered += 1
            payload = response.json()
            prediction_id = oip.row_ids(payload)[0]
            feedback = client.post(
                f"{url}/v2/models/{model}/feedback", json={"id": prediction_id, "label": int(row.label)}
            )
            labelled += feedback.status_code < 300
    return answered, labelled


def pod_logs_containing(cluster, namespace: str, marker: str) -> list[str]:  # noqa: ANN001
    """Names of this namespace's pods whose container logs contain ``marker``."""
    pods_dir = cluster.node_agent.root / "pods" / namespace
    names = sorted(p.name for p in pods_dir.iterdir()) if pods_dir.exists() else []
    return [pod for pod in names if marker in cluster.node_agent.pod_log(namespace, pod)]


def wait_for_stage(cluster, namespace: str, stage: str, timeout: float = 180.0) -> str:  # noqa: ANN001
    """The trainer pod whose progress log has started ``stage`` (polled fast: the moment matters)."""
    marker = f'"stage": "{stage}", '
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = [p for p in pod_logs_containing(cluster, namespace, marker)]
        if found:
            return found[0]
        time.sleep(0.05)
    raise TimeoutError(f"no trainer pod reached stage {stage!r} within {timeout:.0f}s")


def pipeline_on_s3(server, namespace: str, name: str, source: str, **kwargs: Any) -> str:  # noqa: ANN001
    """training_helpers.pipeline_yaml with ``spec.store`` on this server (kwargs: its options)."""
    from training_helpers import pipeline_yaml

    extra = {"store": store_access(server), **kwargs.pop("extra", {})}
    return pipeline_yaml(name, source, extra=extra, **kwargs)


def rollout_on_s3(server, namespace: str, pipeline: str) -> str:  # noqa: ANN001
    """A Rollout serving ``pipeline``'s approved versions at once (no analysis), its servers on s3."""
    return json.dumps(
        {
            "apiVersion": "noria.dev/v1alpha1",
            "kind": "Rollout",
            "metadata": {"name": pipeline, "namespace": namespace},
            "spec": {
                "source": {"pipeline": pipeline},
                "replicas": 1,
                "strategy": {"immediate": {}},
                "scaleDownDelay": "3s",
                "store": store_access(server),
            },
        }
    )


def secret_leaks(cluster, namespace: str, secret: str, *texts: str) -> list[str]:  # noqa: ANN001
    """Where ``secret`` appears: the namespace's objects other than Secrets (status, Events,
    ConfigMaps, Jobs, pods), its pods' logs, and ``texts`` (e.g. the operator's log)."""
    leaks = []
    kinds = (
        "trainingpipelines,modelversions,rollouts.noria.dev,events,configmaps,jobs,pods,deployments,services"
    )
    if secret in cluster.kubectl("get", kinds, "-n", namespace, "-o", "json").stdout:
        leaks.append(f"objects in {namespace}")
    leaks += [f"log of pod {pod}" for pod in pod_logs_containing(cluster, namespace, secret)]
    leaks += [f"text #{i}" for i, text in enumerate(texts) if secret in text]
    return leaks

"""Operator settings, read once from the environment (the Helm chart and the test bed set them)."""

from __future__ import annotations

import os
from dataclasses import dataclass

from noria.artifact_scope import (
    TRUSTED_DATA_PREFIXES_ENV,
    TRUSTED_PREFIXES_ENV,
    ArtifactScope,
    UriScope,
    data_source_scope,
    parse_trusted_prefixes,
)
from noria.objectstore import DEFAULT_REGION_ENV, ENDPOINT_ENV, REGION_ENV
from noria.store import DEFAULT_STORE_ROOT


@dataclass(frozen=True)
class Settings:
    # Where artifacts live, as seen from inside trainer and server pods.
    store_root: str = DEFAULT_STORE_ROOT
    # The PersistentVolumeClaim holding the store, mounted at store_mount_path in trainer/server pods.
    store_pvc: str = "noria-store"
    store_mount_path: str = "/var/lib/noria/store"
    # The same store as the operator process itself sees it (to read drift profiles and count new
    # data rows). Empty: the same as store_root (an operator that mounts the PVC at the same path).
    local_store_root: str = ""
    trainer_image: str = "ghcr.io/noria-dev/noria-trainer:0.1.0"
    # The trainer image of pipelines with spec.data.feast: the trainer with Feast, which needs pandas<3
    # (trainer_image/Dockerfile.feast, docs/training-feast.md). Empty: trainer_image for those too.
    trainer_feast_image: str = "ghcr.io/noria-dev/noria-trainer-feast:0.1.0"
    server_image: str = "ghcr.io/noria-dev/noria-server:0.1.0"
    prometheus_url: str = "http://prometheus.monitoring:9090"
    prometheus_timeout_seconds: float = 5.0
    # Port of the operator's own /metrics (0 disables it).
    metrics_port: int = 9808
    # Registry prefixes (besides each namespace's own <store_root>/<namespace>/) that ModelVersion
    # artifacts may come from, NORIA_TRUSTED_ARTIFACT_PREFIXES (comma- or space-separated); "{namespace}" stands for the ModelVersion's namespace. Empty: none.
    trusted_artifact_prefixes: tuple[str, ...] = ()
    # Prefixes (besides <store_root>/<namespace>/ and the shared <store_root>/datasets/) that a
    # TrainingPipeline's spec.data.source may read, NORIA_TRUSTED_DATA_PREFIXES: a setting of its
    # own, because trusting a registry to hold models is not letting every namespace train on it.
    trusted_data_prefixes: tuple[str, ...] = ()
    # The operator's own s3:// access, from the AWS SDK's variables in its environment (botocore
    # reads them itself; credentials too, or workload identity). Endpoint and region are also what
    # trainer and server pods get when their spec.store.s3 names none (noria.objectstore).
    s3_endpoint: str = ""
    s3_region: str = ""

    def artifact_scope(self) -> ArtifactScope:
        return ArtifactScope(self.store_root, self.trusted_artifact_prefixes)

    def data_scope(self) -> UriScope:
        return data_source_scope(self.store_root, self.trusted_data_prefixes)

    def local_uri(self, uri: str) -> str:
        """A store URI as written for pods (under store_root), rewritten for the operator process."""
        local = self.local_store_root.rstrip("/")
        root = self.store_root.rstrip("/")
        if local and local != root and (uri == root or uri.startswith(root + "/")):
            return local + uri[len(root):]
        return uri

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None) -> Settings:
        e = os.environ if env is None else env
        d = cls()
        return cls(
            store_root=e.get("NORIA_STORE_ROOT", d.store_root),
            store_pvc=e.get("NORIA_STORE_PVC", d.store_pvc),
            store_mount_path=e.get("NORIA_STORE_MOUNT_PATH", d.store_mount_path),
            local_store_root=e.get("NORIA_LOCAL_STORE_ROOT", d.local_store_root),
            trainer_image=e.get("NORIA_TRAINER_IMAGE", d.trainer_image),
            trainer_feast_image=e.get("NORIA_TRAINER_FEAST_IMAGE", d.trainer_feast_image),
            server_image=e.get("NORIA_SERVER_IMAGE", d.server_image),
            prometheus_url=e.get("NORIA_PROMETHEUS_URL", d.prometheus_url),
            prometheus_timeout_seconds=float(e.get("NORIA_PROMETHEUS_TIMEOUT", d.prometheus_timeout_seconds)),
            metrics_port=int(e.get("NORIA_METRICS_PORT", d.metrics_port)),
            trusted_artifact_prefixes=parse_trusted_prefixes(e.get(TRUSTED_PREFIXES_ENV, "")),
            trusted_data_prefixes=parse_trusted_prefixes(e.get(TRUSTED_DATA_PREFIXES_ENV, ""),
                                                         TRUSTED_DATA_PREFIXES_ENV),
            s3_endpoint=e.get(ENDPOINT_ENV, ""),
            s3_region=e.get(REGION_ENV) or e.get(DEFAULT_REGION_ENV, ""),
        )

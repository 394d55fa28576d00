"""How a pod reaches an ``s3://`` store: one translation of ``spec.store.s3`` (``S3Access``) into the
environment of the trainer and model-server containers.

The variables are the AWS SDK's own, which botocore (and so s3fs, and so fsspec) reads natively:
a pod needs no code, no config file and no mounted Secret to use them. Credentials are never values
in a manifest: each is a ``valueFrom.secretKeyRef`` that the kubelet resolves, so they are not in the
Deployment, the Job, the run ConfigMap, the operator's memory or its log, and the operator needs no
right to read Secrets. With no ``credentialsSecret`` the pod uses its workload identity (IRSA, EKS
Pod Identity, GKE/Azure federation) or the node's credentials, which botocore finds on its own.

The operator's own access (to read drift profiles and count new data) is the same variables in its
own environment (the chart sets them); ``Settings.s3_endpoint`` / ``s3_region`` carry its endpoint and
region to pods whose spec names none.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any, Final

from noria.api.common import S3Access

S3_SCHEME: Final = "s3://"

ACCESS_KEY_ENV: Final = "AWS_ACCESS_KEY_ID"
SECRET_KEY_ENV: Final = "AWS_SECRET_ACCESS_KEY"
SESSION_TOKEN_ENV: Final = "AWS_SESSION_TOKEN"
ENDPOINT_ENV: Final = "AWS_ENDPOINT_URL"
# AWS_REGION is what most SDKs read; botocore reads only AWS_DEFAULT_REGION, so a pod gets both.
REGION_ENV: Final = "AWS_REGION"
DEFAULT_REGION_ENV: Final = "AWS_DEFAULT_REGION"

# (Secret key = variable name, optional): the key pair must be there (a pod whose Secret lacks one
# stays in CreateContainerConfigError instead of running anonymously); a session token may be.
CREDENTIAL_KEYS: Final = ((ACCESS_KEY_ENV, False), (SECRET_KEY_ENV, False), (SESSION_TOKEN_ENV, True))


def is_s3(uri: str | None) -> bool:
    return bool(uri) and str(uri).startswith(S3_SCHEME)


def pod_env(
    access: S3Access | None, default_endpoint: str = "", default_region: str = ""
) -> list[dict[str, Any]]:
    """The env entries that let a pod's s3fs reach the store: the endpoint and region (the spec's,
    else the operator's defaults) as values, the credentials as secretKeyRefs (none without a
    ``credentialsSecret``: workload identity)."""
    endpoint = (access.endpoint if access else None) or default_endpoint
    region = (access.region if access else None) or default_region
    env: list[dict[str, Any]] = []
    if endpoint:
        env.append({"name": ENDPOINT_ENV, "value": endpoint})
    if region:
        env += [{"name": REGION_ENV, "value": region}, {"name": DEFAULT_REGION_ENV, "value": region}]
    secret = access.credentials_secret if access else None
    if secret:
        env += [
            {"name": key, "valueFrom": {"secretKeyRef": {"name": secret, "key": key, "optional": optional}}}
            for key, optional in CREDENTIAL_KEYS
        ]
    return env


def parse_access(store: Any) -> S3Access | None:
    """``spec.store`` as the API server stored it (a dict or None) -> its ``s3`` part, validated."""
    s3 = (store or {}).get("s3") if isinstance(store, dict) else None
    return S3Access.model_validate(s3) if s3 else None


def redacted(text: str, env: Mapping[str, str] | None = None) -> str:
    """``text`` (an error message on its way to a log, a status or a termination message) with
    the values of this process's AWS credential variables cut out. botocore's messages name the
    bucket and key, never a credential; this keeps it so whatever a server's error body says."""
    source = os.environ if env is None else env
    for key, _ in CREDENTIAL_KEYS:
        value = source.get(key, "")
        if len(value) >= 4:
            text = text.replace(value, f"<{key}>")
    return text

"""The test bed's S3 server itself (noria_testbed.s3, SeaweedFS): the bucket exists, objects written
through the S3 API read back byte for byte, a killed server started again still has them on the
same endpoint, a wrong secret is refused, and the secret is not in the server's log."""

from __future__ import annotations

import pytest
import s3_helpers
from s3_helpers import filesystem

pytestmark = pytest.mark.integration
s3 = s3_helpers.s3  # the fixture: the test bed's S3 server


def test_objects_survive_a_killed_server_on_the_same_endpoint_and_a_wrong_key_is_refused(s3) -> None:
    from noria_testbed.s3 import BUCKET

    fs = filesystem(s3)
    assert BUCKET in [b.rstrip("/") for b in fs.ls("")]
    payload = bytes(range(256)) * 4096  # 1 MiB
    fs.pipe(f"{BUCKET}/testbed/blob.bin", payload)
    endpoint = s3.endpoint

    from botocore.exceptions import EndpointConnectionError

    s3.kill()
    with pytest.raises(EndpointConnectionError):
        filesystem(s3).cat(f"{BUCKET}/testbed/blob.bin")
    s3.start()

    assert s3.endpoint == endpoint
    assert filesystem(s3).cat(f"{BUCKET}/testbed/blob.bin") == payload

    import s3fs
    from noria_testbed.s3 import REGION

    wrong = s3fs.S3FileSystem(
        key=s3.access_key_id,
        secret="not-the-secret",
        endpoint_url=s3.endpoint,
        client_kwargs={"region_name": REGION},
        skip_instance_cache=True,
    )
    with pytest.raises(PermissionError):
        wrong.cat(f"{BUCKET}/testbed/blob.bin")
    assert s3.secret_access_key not in s3.log_path.read_text(errors="replace")

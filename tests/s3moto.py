"""moto's S3 server on 127.0.0.1 (a free port), standing in for S3 in the object-storage tests.

``moto_endpoint`` starts one ThreadedMotoServer per test module; ``s3_url`` makes a fresh bucket per test and sets
the AWS variables boto3 reads (fake keys: moto accepts any), so nothing can reach the real AWS."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Iterator

import pytest

boto3 = pytest.importorskip("boto3")
moto_server = pytest.importorskip("moto.server")


@pytest.fixture(scope="module")
def moto_endpoint() -> Iterator[str]:
    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server._server.server_address[:2]  # port 0: the OS picked a free one
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.stop()


@pytest.fixture
def s3_env(moto_endpoint: str, monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing-key-id")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing-secret")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    monkeypatch.setenv("XYLEN_S3_ENDPOINT_URL", moto_endpoint)
    return moto_endpoint


def make_bucket(endpoint: str) -> str:
    bucket = f"xylen-{uuid.uuid4().hex[:12]}"
    boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1", aws_access_key_id="testing-key-id",
                 aws_secret_access_key="testing-secret").create_bucket(Bucket=bucket)
    return bucket


@pytest.fixture
def s3_url(s3_env: str) -> str:
    """A fresh bucket, as the location s3://BUCKET/xylen."""
    return f"s3://{make_bucket(s3_env)}/xylen"

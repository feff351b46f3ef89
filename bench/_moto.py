"""moto's S3 server on loopback in its own process (like a real object store: it does not share the benchmark's
GIL), for the S3 benchmarks: ``with moto_s3("xylen-bench") as endpoint: ...``."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager

import httpx
from bench_predict import free_port

CREDENTIALS = {"AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench-secret", "AWS_DEFAULT_REGION": "us-east-1"}


@contextmanager
def moto_s3(bucket: str, *, start_s: float = 60.0) -> Iterator[str]:
    """Start moto's server on a free loopback port, set fake AWS credentials in os.environ (inherited by the
    processes a benchmark starts), create ``bucket`` and yield the endpoint URL; the server is stopped on exit."""
    import boto3

    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    endpoint = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + start_s
        while True:
            try:
                httpx.get(endpoint, timeout=2)
                break
            except httpx.TransportError:
                if time.monotonic() > deadline or server.poll() is not None:
                    raise SystemExit("moto's server did not start (pip install 'moto[server]')") from None
                time.sleep(0.1)
        os.environ.update(CREDENTIALS)
        boto3.client("s3", endpoint_url=endpoint).create_bucket(Bucket=bucket)
        yield endpoint
    finally:
        server.terminate()
        try:
            server.wait(30)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait(30)

"""An S3 service on loopback for the store's tests: moto's server mode, spoken to over real HTTP.

``s3_endpoint`` starts one server per session (a thread of this process: the
CLI's subprocesses reach it by URL); ``bucket`` makes a fresh bucket per test.
The credentials are moto's dummies, exported so that boto3 in this process and
in the CLI's subprocesses finds them (``s3_env``).
"""

from __future__ import annotations

import logging
import os
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

S3_ENV = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}


@pytest.fixture(scope="session")
def s3_endpoint() -> Iterator[str]:
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # one line per request otherwise
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    saved = {k: os.environ.get(k) for k in S3_ENV}
    os.environ.update(S3_ENV)
    try:
        yield f"http://{host}:{port}"
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        server.stop()


def s3_admin(endpoint: str) -> Any:
    """A plain boto3 client, for what the tests do behind the store's back."""
    import boto3

    return boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1", **{
        "aws_access_key_id": S3_ENV["AWS_ACCESS_KEY_ID"], "aws_secret_access_key": S3_ENV["AWS_SECRET_ACCESS_KEY"]})


@pytest.fixture
def bucket(s3_endpoint: str) -> str:
    """A fresh, empty bucket's name."""
    name = f"sg-{uuid.uuid4().hex[:16]}"
    s3_admin(s3_endpoint).create_bucket(Bucket=name)
    return name


@pytest.fixture
def s3_env(s3_endpoint: str) -> dict[str, str]:
    """The environment a `safegene` subprocess needs to reach the loopback S3 service."""
    return {**os.environ, **S3_ENV, "SAFEGENE_STORE_ENDPOINT": s3_endpoint}

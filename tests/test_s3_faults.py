"""The S3 store under a misbehaving network: a proxy on loopback breaks chosen exchanges.

A truncated or corrupted download is never returned (retried, then refused); a
dropped upload leaves nothing visible; a retried one succeeds, including one the
server carried out while its answer was lost.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from registry.errors import IntegrityCheckError, StoreUnavailableError
from tests.fault_proxy import FaultProxy
from tests.s3_fixtures import s3_admin
from tests.test_store_contract import MiB, make_s3_store


@pytest.fixture
def proxy(s3_endpoint: str) -> Iterator[FaultProxy]:
    p = FaultProxy(s3_endpoint)
    try:
        yield p
    finally:
        p.close()


def _keys(endpoint: str, bucket: str) -> list[str]:
    return [o["Key"] for o in s3_admin(endpoint).list_objects_v2(Bucket=bucket).get("Contents", [])]


def _uploads(endpoint: str, bucket: str) -> list[str]:
    return [u["Key"] for u in s3_admin(endpoint).list_multipart_uploads(Bucket=bucket).get("Uploads", [])]


@pytest.mark.parametrize("fault", ["truncate", "corrupt"])
def test_a_broken_download_is_retried_then_refused(tmp_path: Path, s3_endpoint: str, bucket: str,
                                                   proxy: FaultProxy, fault: str) -> None:  # fmt: skip
    store = make_s3_store(tmp_path, proxy.url, bucket, cache=False, max_attempts=3)
    payload = os.urandom(50_000)
    info = store.put(payload)
    proxy.add("GET", info.sha256, fault, times=1)
    assert bytes(store.get(info.sha256)) == payload  # broken once: fetched again
    rule = proxy.add("GET", info.sha256, fault, times=-1)
    with pytest.raises(IntegrityCheckError, match=info.sha256[:12]):
        store.get(info.sha256)
    assert rule.hits >= 2
    proxy.clear()
    assert bytes(store.get(info.sha256)) == payload


def test_a_broken_download_is_not_cached(tmp_path: Path, s3_endpoint: str, bucket: str, proxy: FaultProxy) -> None:
    store = make_s3_store(tmp_path, proxy.url, bucket, max_attempts=2)
    info = store.put(os.urandom(20_000))
    proxy.add("GET", info.sha256, "corrupt", times=-1)
    with pytest.raises(IntegrityCheckError):
        store.get(info.sha256)
    assert store.cache is not None and store.cache.read(info.sha256) is None


def test_a_dropped_upload_leaves_nothing_visible(tmp_path: Path, s3_endpoint: str, bucket: str,
                                                 proxy: FaultProxy) -> None:  # fmt: skip
    store = make_s3_store(tmp_path, proxy.url, bucket, max_attempts=2)
    proxy.add("PUT", "/blobs/", "drop-request", times=-1)
    with pytest.raises(StoreUnavailableError, match="PutObject"):
        store.put(b"never arrives" * 100)
    assert _keys(s3_endpoint, bucket) == []


def test_a_dropped_multipart_upload_is_aborted_and_leaves_nothing(tmp_path: Path, s3_endpoint: str, bucket: str,
                                                                  proxy: FaultProxy) -> None:  # fmt: skip
    store = make_s3_store(tmp_path, proxy.url, bucket, max_attempts=2)
    proxy.add("PUT", "partNumber=2", "drop-request", times=-1)
    with pytest.raises(StoreUnavailableError, match="UploadPart"):
        store.put(os.urandom(12 * MiB))
    assert _keys(s3_endpoint, bucket) == [] and _uploads(s3_endpoint, bucket) == []


@pytest.mark.parametrize("fault", ["drop-request", "drop-response", "slow-down"])
def test_a_retried_upload_succeeds(tmp_path: Path, s3_endpoint: str, bucket: str, proxy: FaultProxy,
                                   fault: str) -> None:  # fmt: skip
    """drop-response: the server stored the object but its answer was lost; the retry meets
    If-None-Match (412), which means "already there", and the blob reads back whole."""
    store = make_s3_store(tmp_path, proxy.url, bucket)
    rule = proxy.add("PUT", "/blobs/", fault, times=1)
    payload = b"arrives on the second try" * 100
    info = store.put(payload)
    assert rule.hits == 1
    assert bytes(store.get(info.sha256)) == payload
    assert len(_keys(s3_endpoint, bucket)) == 1


def test_a_retried_part_completes_the_multipart_upload(tmp_path: Path, s3_endpoint: str, bucket: str,
                                                       proxy: FaultProxy) -> None:  # fmt: skip
    store = make_s3_store(tmp_path, proxy.url, bucket)
    rule = proxy.add("PUT", "partNumber=2", "drop-response", times=1)
    payload = os.urandom(12 * MiB)
    info = store.put(payload)
    assert rule.hits == 1 and bytes(store.get(info.sha256)) == payload
    assert _uploads(s3_endpoint, bucket) == []


def test_a_slow_answer_times_out_and_is_retried(tmp_path: Path, s3_endpoint: str, bucket: str,
                                                proxy: FaultProxy) -> None:  # fmt: skip
    from registry.store.s3 import s3_client

    store = make_s3_store(tmp_path, proxy.url, bucket, cache=False)
    store.client = s3_client(proxy.url, timeout_s=1.0)
    info = store.put(b"patience" * 100)
    rule = proxy.add("GET", info.sha256, "delay", times=1, delay_s=3.0)
    assert bytes(store.get(info.sha256)) == b"patience" * 100
    assert rule.hits == 1


def test_an_unreachable_service_is_one_clear_error(tmp_path: Path, bucket: str) -> None:
    store = make_s3_store(tmp_path, "http://127.0.0.1:9", bucket, max_attempts=1)  # nothing listens on port 9
    with pytest.raises(StoreUnavailableError, match="check --store-endpoint"):
        store.probe()

"""The store's contract, run against both backends: a local directory and an S3 bucket on loopback.

Every test takes the ``store`` fixture, once per backend; the S3 one speaks real
HTTP to moto's server (tests/s3_fixtures.py), with a small multipart threshold
so that a 12 MiB payload goes up in parts.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from registry.catalog.service import Catalog
from registry.errors import ConfigurationError, IntegrityCheckError
from registry.store.base import Store, sha256_hex
from registry.store.blobs import BlobStore
from registry.store.cache import ReadCache
from registry.store.location import canonical_url, parse_size
from registry.store.s3 import S3BlobStore, parse_s3_url
from tests.s3_fixtures import s3_admin

MiB = 2**20


def make_s3_store(tmp_path: Path, endpoint: str, bucket: str, *, cache: bool = True, **kw: object) -> S3BlobStore:
    catalog = Catalog(f"sqlite:///{tmp_path / 'catalog.db'}")  # its writers lock: a file lock beside it
    return S3BlobStore(f"s3://{bucket}/team", lock=catalog.writers_lock, tmp_dir=tmp_path / "tmp",
                       cache=ReadCache(tmp_path / "cache") if cache else None, endpoint=endpoint,
                       multipart_threshold=6 * MiB, part_size=5 * MiB, **kw)  # type: ignore[arg-type]  # fmt: skip


@pytest.fixture(params=["local", "s3"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Store:
    if request.param == "local":
        s: Store = BlobStore(tmp_path / "store")
    else:
        s = make_s3_store(tmp_path, request.getfixturevalue("s3_endpoint"), request.getfixturevalue("bucket"))
    s.ensure()
    return s


def tamper(store: Store, sha: str, data: bytes) -> None:
    """Replace a blob's stored bytes behind the store's back (and forget any cached copy)."""
    if isinstance(store, BlobStore):
        store.path_for(sha).write_bytes(data)
        return
    assert isinstance(store, S3BlobStore)
    s3_admin(store.endpoint or "").put_object(Bucket=store.bucket, Key=store.key_for(sha), Body=data)
    if store.cache is not None:
        store.cache.drop(sha)


def test_put_get_round_trip_is_idempotent(store: Store) -> None:
    payload = os.urandom(1000) + bytes(4000)
    info = store.put(payload)
    assert info.sha256 == sha256_hex(payload) and info.raw_size == len(payload)
    assert bytes(store.get(info.sha256)) == payload
    first = list(store.iter_objects())
    time.sleep(1.1)  # S3 times have a resolution of one second
    again = store.put(payload)
    assert again.sha256 == info.sha256 and again.stored_size == info.stored_size
    assert list(store.iter_objects()) == first  # kept, not rewritten
    assert [o.sha256 for o in first] == [info.sha256] and first[0].size == info.stored_size


def test_every_read_checks_the_stored_bytes(store: Store) -> None:
    info = store.put(b"a payload to corrupt" * 100)
    stored = bytes(store.read_stored(info.sha256))
    assert info.stored_sha256 == sha256_hex(stored)
    bad = bytearray(stored)
    bad[len(bad) // 2] ^= 1
    tamper(store, info.sha256, bytes(bad))
    with pytest.raises(IntegrityCheckError, match="corrupt"):
        store.get(info.sha256)
    with pytest.raises(IntegrityCheckError, match="corrupt"):
        store.check(info.sha256)
    with pytest.raises(IntegrityCheckError):  # the recorded digest no longer matches: full check, which fails
        store.get(info.sha256, stored_sha256=info.stored_sha256)


def test_the_recorded_digest_spares_the_payload_hash_and_a_full_check_reports_it(store: Store) -> None:
    payload = b"verified once" * 200
    info = store.put(payload)
    assert bytes(store.get(info.sha256, stored_sha256=info.stored_sha256)) == payload
    seen: list[str] = []
    assert bytes(store.get(info.sha256, on_verified=seen.append)) == payload
    assert seen == [info.stored_sha256]


def test_a_missing_blob_is_reported_with_what_to_do(store: Store) -> None:
    info = store.put(b"soon gone")
    store.delete(info.sha256)
    assert not store.exists(info.sha256)
    with pytest.raises(IntegrityCheckError, match="missing from the store; run `safegene verify`"):
        store.get(info.sha256)


def test_write_once_keeps_the_first_bytes(store: Store) -> None:
    info = store.put(b"the first writer wins" * 50)
    before = bytes(store.read_stored(info.sha256))
    store.write_stored(info.sha256, [b"a second writer's different bytes"])
    assert bytes(store.read_stored(info.sha256)) == before


def test_a_large_payload_goes_up_in_parts_and_round_trips(store: Store) -> None:
    payload = os.urandom(12 * MiB)  # incompressible: stored ≈ 12 MiB, over the 6 MiB threshold
    info = store.put(payload)
    assert bytes(store.get(info.sha256)) == payload
    if isinstance(store, S3BlobStore):
        head = s3_admin(store.endpoint or "").head_object(Bucket=store.bucket, Key=store.key_for(info.sha256))
        assert head["ETag"].strip('"').endswith("-3")  # a multipart object of 5 + 5 + 2 MiB


def test_listing_ignores_what_is_not_a_blob(store: Store) -> None:
    info = store.put(b"listed")
    if isinstance(store, BlobStore):
        (store.blob_dir / "zz").mkdir()
        (store.blob_dir / "zz" / "not-a-sha").write_bytes(b"x")
        (store.blob_dir / info.sha256[:2] / ("0" * 64)).write_bytes(b"x")  # in the wrong sub-folder
    else:
        assert isinstance(store, S3BlobStore)
        admin = s3_admin(store.endpoint or "")
        admin.put_object(Bucket=store.bucket, Key="team/blobs/zz/not-a-sha", Body=b"x")
        admin.put_object(Bucket=store.bucket, Key=f"team/blobs/{info.sha256[:2]}/{'0' * 64}", Body=b"x")
        admin.put_object(Bucket=store.bucket, Key=f"other/blobs/{'1' * 2}/{'1' * 64}", Body=b"x")
    assert list(store.iter_shas()) == [info.sha256]


def test_gc_waits_for_a_writer_between_its_blobs_and_its_commit(store: Store) -> None:
    order: list[str] = []
    holding, release = threading.Event(), threading.Event()

    def writer() -> None:
        with store.writing():
            holding.set()
            release.wait(10)
            order.append("writer done")

    t = threading.Thread(target=writer)
    t.start()
    assert holding.wait(10)

    def collector() -> None:
        with store.collecting():
            order.append("gc ran")

    g = threading.Thread(target=collector)
    g.start()
    time.sleep(0.5)
    assert order == []  # gc is waiting
    release.set()
    t.join(10)
    g.join(10)
    assert order == ["writer done", "gc ran"]


def test_stale_uploads_are_listed_and_aborted(tmp_path: Path, s3_endpoint: str, bucket: str) -> None:
    store = make_s3_store(tmp_path, s3_endpoint, bucket)
    admin = s3_admin(s3_endpoint)
    admin.create_multipart_upload(Bucket=bucket, Key=f"team/blobs/ab/{'ab' * 32}")
    admin.create_multipart_upload(Bucket=bucket, Key="elsewhere/blobs/ab/x")  # not this store's
    stale = [t for t in store.stale_temps(older_than_s=0) if t.path is None]
    assert len(stale) == 1 and stale[0].name.startswith("upload abababababab")
    stale[0].remove()
    left = admin.list_multipart_uploads(Bucket=bucket).get("Uploads", [])
    assert [u["Key"] for u in left] == ["elsewhere/blobs/ab/x"]


def test_a_damaged_cached_copy_is_dropped_and_fetched_again(tmp_path: Path, s3_endpoint: str, bucket: str) -> None:
    store = make_s3_store(tmp_path, s3_endpoint, bucket)
    payload = b"cached" * 1000
    info = store.put(payload)
    assert bytes(store.get(info.sha256)) == payload  # downloaded, then cached
    assert store.cache is not None
    cached = store.cache.path_for(info.sha256)
    good = cached.read_bytes()
    cached.write_bytes(good[:-3] + b"xyz")
    assert bytes(store.get(info.sha256)) == payload
    assert cached.read_bytes() == good


def test_the_read_cache_stays_within_its_bound(tmp_path: Path, s3_endpoint: str, bucket: str) -> None:
    store = make_s3_store(tmp_path, s3_endpoint, bucket)
    store.cache = ReadCache(tmp_path / "small-cache", max_bytes=250_000)
    infos = [store.put(os.urandom(100_000)) for _ in range(5)]
    for info in infos:
        store.get(info.sha256)
    count, size = store.cache.usage()
    assert size <= 250_000 and count == 2
    assert store.cache.read(infos[-1].sha256) is not None  # the most recent is kept
    assert store.cache.read(infos[0].sha256) is None


def test_the_writers_lock_on_postgresql_spans_processes_and_dies_with_its_holder(pg_url: str) -> None:
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time\nfrom registry.catalog.service import Catalog\n"
         f"with Catalog({pg_url!r}).writers_lock(exclusive=False):\n    print('held', flush=True)\n    time.sleep(60)"],
        stdout=subprocess.PIPE, text=True)  # fmt: skip
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        got = threading.Event()
        catalog = Catalog(pg_url)
        with catalog.writers_lock(exclusive=False):
            pass  # other writers share it

        def collect() -> None:
            with catalog.writers_lock(exclusive=True):
                got.set()

        t = threading.Thread(target=collect, daemon=True)
        t.start()
        assert not got.wait(1.0)  # another process's writer holds it
        holder.kill()  # SIGKILL: the server ends its session and releases the lock
        assert got.wait(15)
        catalog.close()
    finally:
        holder.kill()
        holder.wait()


@pytest.mark.parametrize("url", ["s3://", "s3://UPPER", "s3://a", "s3://ok-bucket/../etc", "s3://ok-bucket/a/./b",
                                 "s3://ok-bucket/sp ace", "s3://x..y/p", "gs://bucket"])  # fmt: skip
def test_hostile_store_urls_are_refused(url: str) -> None:
    with pytest.raises(ConfigurationError):
        parse_s3_url(url)


def test_store_urls_have_one_spelling(tmp_path: Path) -> None:
    assert canonical_url("s3://bkt/a//b/", tmp_path) == "s3://bkt/a/b"
    assert canonical_url(None, tmp_path) == canonical_url(str(tmp_path / "store"), tmp_path) == "local"
    assert canonical_url(f"file://{tmp_path}/x/../y", tmp_path) == str((tmp_path / "y").resolve())
    with pytest.raises(ConfigurationError, match="absolute path"):
        canonical_url("relative/dir", tmp_path)
    assert parse_size("2G", 0) == 2 * 2**30 and parse_size("512MiB", 0) == 512 * MiB and parse_size(None, 7) == 7
    with pytest.raises(ConfigurationError):
        parse_size("lots", 0)


def test_several_processes_share_one_bounded_cache(tmp_path: Path, s3_endpoint: str, bucket: str) -> None:
    """Three processes read the same blobs at once through one small cache (eviction running
    under their feet): every read returns its payload, and the cache ends within its bound."""
    store = make_s3_store(tmp_path, s3_endpoint, bucket, cache=False)
    infos = [store.put(os.urandom(60_000)) for _ in range(8)]
    script = (
        "import sys, hashlib\nfrom pathlib import Path\nfrom tests.test_store_contract import make_s3_store\n"
        "from registry.store.cache import ReadCache\n"
        "store = make_s3_store(Path(sys.argv[1]), sys.argv[2], sys.argv[3], cache=False)\n"
        "store.cache = ReadCache(Path(sys.argv[4]), max_bytes=200_000)\n"
        "for _ in range(5):\n    for sha in sys.argv[5:]:\n"
        "        assert hashlib.sha256(bytes(store.get(sha))).hexdigest() == sha\n"
        "print('ok')\n"
    )  # fmt: skip
    shas = [i.sha256 for i in infos]
    procs = [subprocess.Popen([sys.executable, "-c", script, str(tmp_path / f"p{n}"), s3_endpoint, bucket,
                               str(tmp_path / "shared-cache"), *shas], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True, cwd=Path(__file__).resolve().parents[1])  # fmt: skip
             for n in range(3)]
    for p in procs:
        out, err = p.communicate(timeout=120)
        assert p.returncode == 0 and out.strip() == "ok", err[-2000:]
    count, size = ReadCache(tmp_path / "shared-cache", max_bytes=200_000).usage()
    assert 0 < count and size <= 200_000  # every put evicts, seeing every process's entries


def test_a_relative_home_keeps_its_local_store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`safegene --home demo-work/home` (the README's `make demo`): a relative home is the default local store."""
    from registry.api import Registry

    monkeypatch.chdir(tmp_path)
    with Registry.open("rel/home") as reg:
        assert reg.store_location == "local"
        with reg.store.writing():  # the guard compares the catalog's record with this store
            info = reg.store.put(b"relative")
        assert (tmp_path / "rel/home/store/blobs" / info.sha256[:2] / info.sha256).is_file()
    with Registry.open("rel/home", store_url=str(tmp_path / "rel/home/store")) as again:
        assert again.store_location == "local"

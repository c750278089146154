"""Blobs in an S3-compatible bucket (AWS S3, MinIO, Ceph RGW, R2, GCS interop).

Layout: ``s3://BUCKET/PREFIX/blobs/3f/3fa9…e1``, one object per blob, the same
bytes and names as the local store. The guarantees of :class:`~registry.store.base.Store`,
on a service shared by many hosts:

* **write-once**: ``PutObject`` / ``CompleteMultipartUpload`` with
  ``If-None-Match: *``; a 412 means the blob is already there (content
  addressed: the same payload). Where a service does not implement
  conditional writes (501), the object is checked absent first and read back
  after the write. An object becomes visible whole or not at all: a dropped
  upload leaves nothing.
* **verified reads**: a download must have the announced length and decode to
  its name (or match the catalog's stored digest); a corrupt or truncated one is
  fetched again once, then refused.
* **large slices** go up as multipart uploads; an upload left by a dead writer
  is aborted by ``gc``, which runs only when no writer holds the lock.
* **retries** with exponential backoff and jitter on throttling, 5xx and
  dropped connections (botocore's standard retry mode, and the same for a body
  cut off mid-read).
* **the writers/collector lock** lives in the catalog
  (:meth:`registry.catalog.service.Catalog.writers_lock`), since a file lock
  means nothing across hosts.
* a **read-through cache** on local disk (:mod:`registry.store.cache`), so that
  patching many models with one vector downloads each slice once.

Client: boto3. It is the reference implementation of the S3 protocol's edge
cases (conditional writes, checksums, SigV4 against MinIO/Ceph/R2, retry
modes), and its cost (import time, Python-level I/O) is small beside a
vector's decoding; the bench (``benchmarks/store_s3.py``) measures it.
"""

from __future__ import annotations

import bisect
import contextlib
import functools
import io
import itertools
import os
import random
import re
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from .._faults import crashpoint
from .._version import __version__
from ..errors import ConfigurationError, IntegrityCheckError, StoreUnavailableError
from . import codec as _codec
from .base import (
    SHA_RE,
    StaleTemp,
    Store,
    StoredObject,
    check_sha,
    missing,
    verify_stored,
)
from .blobs import local_temp, stale_local_temps
from .cache import ReadCache

MULTIPART_THRESHOLD = 64 * 2**20
PART_SIZE = 16 * 2**20  # S3's minimum part is 5 MiB (but the last)
MAX_ATTEMPTS = 5
_BUCKET_RE = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")
_SEGMENT_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")

Lock = Callable[..., contextlib.AbstractContextManager[None]]


def parse_s3_url(url: str) -> tuple[str, str]:
    """``s3://bucket[/prefix…]`` → (bucket, prefix without slashes at either end).

    Raises:
        ConfigurationError: not an s3:// URL, or an invalid bucket name or prefix.
    """
    if not url.startswith("s3://"):
        raise ConfigurationError(f"{url!r} is not an s3:// URL; give s3://BUCKET/PREFIX")
    bucket, _, prefix = url[len("s3://"):].partition("/")
    if not _BUCKET_RE.match(bucket) or ".." in bucket:
        raise ConfigurationError(f"{bucket!r} is not a valid bucket name (3-63 of a-z 0-9 . -): fix the store URL")
    segments = [p for p in prefix.split("/") if p]
    for seg in segments:
        if not _SEGMENT_RE.match(seg) or seg in (".", ".."):
            raise ConfigurationError(f"store prefix segment {seg!r} is not allowed: use letters, digits, . _ -")
    return bucket, "/".join(segments)


def s3_client(endpoint: str | None, *, max_attempts: int = MAX_ATTEMPTS, timeout_s: float = 60.0) -> Any:
    """A boto3 S3 client: credentials and region from the usual AWS environment and files."""
    try:
        import boto3
        from botocore.config import Config
    except ImportError:
        raise ConfigurationError("an s3:// store needs boto3: pip install 'safegene[s3]'") from None
    config = Config(
        retries={"max_attempts": max_attempts, "mode": "standard"},
        connect_timeout=min(10.0, timeout_s), read_timeout=timeout_s,
        s3={"addressing_style": "path"} if endpoint else {},  # path style: what MinIO/Ceph serve by default
        user_agent_extra=f"safegene/{__version__}",
    )  # fmt: skip
    region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or "us-east-1"
    return boto3.session.Session().client("s3", endpoint_url=endpoint or None, region_name=region, config=config)


class S3BlobStore(Store):
    """Content-addressed blobs in ``s3://bucket/prefix``.

    Args:
        url: ``s3://bucket[/prefix]``.
        lock: ``lock(exclusive=bool)``, the writers/collector lock (the catalog's).
        tmp_dir: a local folder for leases of folders being published.
        cache: the local read-through cache (None: every read downloads).
        endpoint: an S3-compatible service's URL (default: AWS, or ``AWS_ENDPOINT_URL``).
        client: a boto3 S3 client to use instead of one made from the environment.
    """

    def __init__(self, url: str, *, lock: Lock, tmp_dir: str | Path, cache: ReadCache | None = None,
                 endpoint: str | None = None, client: Any = None, multipart_threshold: int = MULTIPART_THRESHOLD,
                 part_size: int = PART_SIZE, max_attempts: int = MAX_ATTEMPTS) -> None:  # fmt: skip
        self.bucket, self.prefix = parse_s3_url(url)
        self.url = f"s3://{self.bucket}/{self.prefix}" if self.prefix else f"s3://{self.bucket}"
        self.endpoint = endpoint
        self._client = client
        self.tmp_dir = Path(tmp_dir)
        self.cache = cache
        self.multipart_threshold = multipart_threshold
        self.part_size = part_size
        self.max_attempts = max_attempts
        self.conditional_writes = True  # cleared on the first 501 to If-None-Match
        self._lock_fn = lock
        self._blob_prefix = f"{self.prefix}/blobs/" if self.prefix else "blobs/"

    @property
    def client(self) -> Any:
        """The boto3 client, made on first use (commands that never touch a blob never import boto3)."""
        if self._client is None:
            self._client = s3_client(self.endpoint, max_attempts=self.max_attempts)
        return self._client

    @client.setter
    def client(self, value: Any) -> None:
        self._client = value

    def key_for(self, sha: str) -> str:
        check_sha(sha)
        return f"{self._blob_prefix}{sha[:2]}/{sha}"

    # --- primitives ------------------------------------------------------------

    def ensure(self) -> None:
        self.tmp_dir.mkdir(parents=True, exist_ok=True)  # the bucket is only contacted when used

    def probe(self) -> None:
        self.ensure()
        self._call("HeadBucket", lambda: self.client.head_bucket(Bucket=self.bucket))

    def exists(self, sha: str) -> bool:
        return self.stored_head(sha) is not None

    def stored_head(self, sha: str) -> tuple[bytes, int] | None:
        key = self.key_for(sha)
        try:
            resp = self._call("GetObject", lambda: self.client.get_object(Bucket=self.bucket, Key=key,
                                                                         Range="bytes=0-4"))  # fmt: skip
        except _NotFound:
            return None
        head = resp["Body"].read()
        total = resp.get("ContentRange", "").rpartition("/")[2]
        return head, int(total) if total.isdigit() else int(resp["ContentLength"])

    def read_stored(self, sha: str, scratch: _codec.Scratch | None = None) -> _codec.Buffer:
        """Download the stored bytes whole (retried when the body is cut off), unverified."""
        key = self.key_for(sha)
        for attempt in range(self.max_attempts):
            try:
                resp = self._call("GetObject", lambda: self.client.get_object(Bucket=self.bucket, Key=key))
            except _NotFound:
                raise missing(sha) from None
            try:
                data: bytes = resp["Body"].read()
            except _transient_errors() as exc:
                _backoff(attempt)
                last: BaseException = exc
                continue
            if len(data) == int(resp["ContentLength"]):
                return data
            last = IntegrityCheckError(f"got {len(data)} of {resp['ContentLength']} bytes")
            _backoff(attempt)
        raise IntegrityCheckError(f"blob {sha[:12]} could not be downloaded whole from {self.url} "
                                  f"({self.max_attempts} attempts; last: {last})")  # fmt: skip

    def write_stored(self, sha: str, parts: list[bytes]) -> None:
        key = self.key_for(sha)
        size = sum(len(p) for p in parts)
        if not self.conditional_writes and self.stored_head(sha) is not None:
            return
        if size >= self.multipart_threshold:
            created = self._multipart(key, parts, size)
        else:
            created = self._put(key, parts)
        if created and not self.conditional_writes:
            # No write-once guarantee from this service: prove what is there now.
            verify_stored(sha, self.read_stored(sha))

    def delete(self, sha: str) -> None:
        key = self.key_for(sha)
        self._call("DeleteObject", lambda: self.client.delete_object(Bucket=self.bucket, Key=key))
        if self.cache is not None:
            self.cache.drop(sha)

    def iter_objects(self) -> Iterator[StoredObject]:
        pages = self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=self._blob_prefix)
        found = []
        for page in self._pages("ListObjectsV2", pages):
            for obj in page.get("Contents", []):
                sub, _, name = obj["Key"][len(self._blob_prefix):].partition("/")
                if SHA_RE.match(name) and name[:2] == sub:
                    found.append(StoredObject(name, int(obj["Size"]), obj["LastModified"].timestamp()))
        yield from sorted(found, key=lambda o: o.sha256)

    def stale_temps(self, *, older_than_s: float = 3600.0) -> list[StaleTemp]:
        """Dead writers' local temp files and leases, and multipart uploads begun before the cutoff.

        Only meaningful under :meth:`collecting` for the uploads: no writer is
        then between its first part and its completion.
        """
        out = [local_temp(p) for p in stale_local_temps(self.tmp_dir, older_than_s)]
        if self.cache is not None:
            out += [local_temp(p) for p in stale_local_temps(self.cache.tmp_dir, older_than_s)]
        cutoff = time.time() - older_than_s
        pages = self.client.get_paginator("list_multipart_uploads").paginate(Bucket=self.bucket,
                                                                             Prefix=self._blob_prefix)  # fmt: skip
        for page in self._pages("ListMultipartUploads", pages):
            for up in page.get("Uploads", []):
                if up["Initiated"].timestamp() < cutoff:
                    key, uid = up["Key"], up["UploadId"]
                    out.append(StaleTemp(f"upload {key.rpartition('/')[2][:12]} ({uid[:8]})", 0, None,
                                         functools.partial(self._abort, key, uid)))  # fmt: skip
        return out

    def _lock(self, *, exclusive: bool) -> contextlib.AbstractContextManager[None]:
        return self._lock_fn(exclusive=exclusive)

    # --- reads through the cache ---------------------------------------------------

    def get(self, sha: str, *, max_size: int | None = None, scratch: _codec.Scratch | None = None,
            stored_sha256: str | None = None,
            on_verified: Callable[[str], None] | None = None) -> bytes | bytearray | memoryview:  # fmt: skip
        """As :meth:`Store.get`; a cached copy is verified like a download, and a download is cached."""
        def check(stored: _codec.Buffer) -> bytes | bytearray | memoryview:
            return verify_stored(sha, stored, max_size=max_size, scratch=scratch, stored_sha256=stored_sha256,
                                 on_verified=on_verified)  # fmt: skip

        cached = self.cache.read(check_sha(sha)) if self.cache is not None else None
        if cached is not None:
            try:
                return check(cached)
            except IntegrityCheckError:
                assert self.cache is not None
                self.cache.drop(sha)  # a damaged copy: fetch the blob again
        stored = self.read_stored(sha)
        try:
            payload = check(stored)
        except IntegrityCheckError:
            stored = self.read_stored(sha)  # corrupted on the way? once more, then refuse
            payload = check(stored)
        if self.cache is not None:
            self.cache.put(sha, stored)
        return payload

    # --- S3 calls ------------------------------------------------------------------

    def _put(self, key: str, parts: list[bytes]) -> bool:
        """PutObject, write-once; False when the object already existed.

        The parts are sent as they are (a seekable reader over them, which botocore
        rewinds to retry), never joined into one more copy of the blob.
        """
        extra = {"IfNoneMatch": "*"} if self.conditional_writes else {}
        body = _PartsReader(parts)
        try:
            self._call("PutObject", lambda: self.client.put_object(Bucket=self.bucket, Key=key, Body=body,
                                                                   ContentLength=body.size, **extra))  # fmt: skip
        except _Exists:
            return False
        except _NotImplemented:
            self.conditional_writes = False
            return self._put(key, parts)
        crashpoint("s3.put-done")
        return True

    def _multipart(self, key: str, parts: list[bytes], size: int) -> bool:
        """A multipart upload, write-once on completion; aborted on any failure."""
        uid = self._call("CreateMultipartUpload",
                         lambda: self.client.create_multipart_upload(Bucket=self.bucket, Key=key))["UploadId"]  # fmt: skip
        try:
            done = []
            for number, chunk in enumerate(_chunks(parts, self.part_size), start=1):
                upload = functools.partial(self.client.upload_part, Bucket=self.bucket, Key=key, UploadId=uid,
                                           PartNumber=number, Body=chunk)  # fmt: skip
                resp = self._call("UploadPart", upload)
                done.append({"PartNumber": number, "ETag": resp["ETag"]})
                crashpoint("s3.part-uploaded")
            extra = {"IfNoneMatch": "*"} if self.conditional_writes else {}
            crashpoint("s3.before-complete")
            self._call("CompleteMultipartUpload", lambda: self.client.complete_multipart_upload(
                Bucket=self.bucket, Key=key, UploadId=uid, MultipartUpload={"Parts": done}, **extra))  # fmt: skip
            return True
        except _Exists:
            self._abort(key, uid)
            return False
        except _NotImplemented:
            self._abort(key, uid)
            self.conditional_writes = False
            return self._multipart(key, parts, size)
        except BaseException:
            with contextlib.suppress(Exception):
                self._abort(key, uid)
            raise

    def _abort(self, key: str, uid: str) -> None:
        with contextlib.suppress(_NotFound):
            self._call("AbortMultipartUpload",
                       lambda: self.client.abort_multipart_upload(Bucket=self.bucket, Key=key, UploadId=uid))  # fmt: skip

    def _pages(self, op: str, pages: Any) -> Iterator[dict[str, Any]]:
        it = iter(pages)
        while True:
            try:
                page = self._call(op, lambda: next(it))
            except StopIteration:
                return
            yield page

    def _call(self, op: str, fn: Callable[[], Any]) -> Any:
        """One S3 call (botocore retries throttling, 5xx and dropped connections), errors made ours."""
        from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError

        try:
            return fn()
        except ClientError as exc:
            err = exc.response.get("Error", {})
            code, status = str(err.get("Code", "")), exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
            if code in ("PreconditionFailed", "ConditionalRequestConflict") or status == 412:
                raise _Exists from None
            if code in ("NoSuchKey", "404", "NotFound", "NoSuchUpload") and op != "HeadBucket":
                raise _NotFound from None
            if code == "NotImplemented" or status == 501:
                raise _NotImplemented from None
            raise self._unavailable(op, f"{code or status}: {err.get('Message') or exc}") from None
        except NoCredentialsError:
            raise StoreUnavailableError(f"no credentials for {self.url}: set AWS_ACCESS_KEY_ID and "
                                        "AWS_SECRET_ACCESS_KEY (or AWS_PROFILE)") from None  # fmt: skip
        except BotoCoreError as exc:
            raise self._unavailable(op, str(exc)) from None

    def _unavailable(self, op: str, why: str) -> StoreUnavailableError:
        where = f" at {self.endpoint}" if self.endpoint else ""
        hint = ("create the bucket, or fix --store" if "NoSuchBucket" in why or why.startswith("404")
                else "check --store-endpoint / AWS_ENDPOINT_URL, the credentials and that the service answers")  # fmt: skip
        return StoreUnavailableError(f"{op} on {self.url}{where} failed ({why}); {hint}")


class _PartsReader(io.RawIOBase):
    """A read-only, seekable file over consecutive byte strings (no copy of the whole)."""

    def __init__(self, parts: list[bytes]) -> None:
        self._parts = [memoryview(p) for p in parts if len(p)]
        self._starts = list(itertools.accumulate((len(p) for p in self._parts), initial=0))
        self.size = self._starts[-1]
        self._pos = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: self.size}[whence]
        self._pos = min(max(0, base + offset), self.size)
        return self._pos

    def readinto(self, buffer: Any) -> int:
        out = memoryview(buffer).cast("B")
        done = 0
        while done < len(out) and self._pos < self.size:
            i = bisect.bisect_right(self._starts, self._pos) - 1
            part = self._parts[i][self._pos - self._starts[i]:]
            n = min(len(part), len(out) - done)
            out[done:done + n] = part[:n]
            done += n
            self._pos += n
        return done


class _Exists(Exception):
    pass


class _NotFound(Exception):
    pass


class _NotImplemented(Exception):
    pass


def _transient_errors() -> tuple[type[BaseException], ...]:
    from botocore.exceptions import BotoCoreError
    from urllib3.exceptions import HTTPError

    return (BotoCoreError, HTTPError, ConnectionError, TimeoutError)


def _backoff(attempt: int) -> None:
    time.sleep(random.uniform(0, min(8.0, 0.1 * 2**attempt)))  # full jitter


def _chunks(parts: list[bytes], size: int) -> Iterator[bytes]:
    """The bytes of ``parts`` re-cut into chunks of ``size`` (the last may be shorter)."""
    buf = bytearray()
    for part in parts:
        view = memoryview(part)
        while view.nbytes:
            take = min(size - len(buf), view.nbytes)
            buf += view[:take]
            view = view[take:]
            if len(buf) == size:
                yield bytes(buf)
                buf.clear()
    if buf:
        yield bytes(buf)

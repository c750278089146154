"""Teams: a PostgreSQL catalog and an S3 bucket shared by several hosts, through the CLI.

Each "host" is its own registry home (its own temp files, leases and read
cache) running `safegene` in its own process; all of them talk to one
PostgreSQL catalog and one bucket on moto's loopback server.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.fault_proxy import FaultProxy
from tests.s3_fixtures import s3_admin


def sg(home: Path, *args: str, env: dict[str, str], db: str | None = None, store: str | None = None,
       check: bool = True) -> subprocess.CompletedProcess[str]:  # fmt: skip
    cmd = [sys.executable, "-m", "cli", "--home", str(home)]
    cmd += ["--db", db] if db else []
    cmd += ["--store", store] if store else []
    proc = subprocess.run([*cmd, *args], env=env, text=True, capture_output=True, timeout=300)
    if check and proc.returncode != 0:
        raise AssertionError(f"safegene {' '.join(args)} failed ({proc.returncode}): {proc.stderr}")
    return proc


def sg_json(home: Path, *args: str, env: dict[str, str], **kw: str) -> dict:  # type: ignore[type-arg]
    return json.loads(sg(home, "--json", *args, env=env, **kw).stdout)  # type: ignore[arg-type]


def keys(endpoint: str, bucket: str) -> list[str]:
    return sorted(o["Key"] for o in s3_admin(endpoint).list_objects_v2(Bucket=bucket).get("Contents", []))


def test_extract_patch_verify_gc_on_postgresql_and_a_bucket(tmp_path: Path, pg_url: str, bucket: str,
                                                            s3_endpoint: str, s3_env: dict[str, str],
                                                            tiny_models: dict[str, Path]) -> None:  # fmt: skip
    home, url = tmp_path / "home", f"s3://{bucket}/team"
    run = {"env": s3_env, "db": pg_url, "store": url}
    assert sg_json(home, "init", **run)["store"] == url
    sg(home, "vector", "extract", "--aligned", str(tiny_models["llama"]), "--degraded", str(tiny_models["llama_b"]),
       "--name", "v", **run)  # fmt: skip
    blobs = keys(s3_endpoint, bucket)
    assert blobs and all(k.startswith("team/blobs/") for k in blobs)
    assert not (home / "store" / "blobs").exists()  # nothing went to the local directory
    sg(home, "patch", str(tiny_models["llama_b"]), "--vector", "v", "--coefficients", "uniform:0.5",
       "--out", str(tmp_path / "patched"), **run)  # fmt: skip
    rep = sg_json(home, "verify", **run)
    assert rep["ok"] and rep["blobs_checked"] == len(blobs)
    # the catalog remembers the bucket: no --store needed any more, and another one is refused
    info = sg_json(home, "store", "info", env=s3_env, db=pg_url)
    assert info["store"] == url and info["blobs"] == len(blobs) and info["cache"]["blobs"] == len(blobs)
    wrong = sg(home, "verify", env=s3_env, db=pg_url, store=f"s3://{bucket}/other", check=False)
    assert wrong.returncode == 9 and "store migrate" in wrong.stderr and len(wrong.stderr.splitlines()) == 1
    # removal: gc deletes the objects of a removed vector, and only after the grace period
    sg(home, "vector", "rm", "v", env=s3_env, db=pg_url)
    assert sg_json(home, "gc", env=s3_env, db=pg_url)["removed_blobs"] == []
    assert len(sg_json(home, "gc", "--grace", "0", env=s3_env, db=pg_url)["removed_blobs"]) == len(blobs)
    assert keys(s3_endpoint, bucket) == []
    assert sg_json(home, "verify", env=s3_env, db=pg_url)["ok"]


def test_two_hosts_extract_and_patch_at_once(tmp_path: Path, pg_url: str, bucket: str, s3_endpoint: str,
                                             s3_env: dict[str, str], tiny_models: dict[str, Path]) -> None:  # fmt: skip
    url = f"s3://{bucket}/team"
    sg(tmp_path / "admin", "init", env=s3_env, db=pg_url, store=url)
    pairs = {"host-a": ("llama", "llama_b"), "host-b": ("llama_b", "llama")}
    procs = []
    for host, (a, d) in pairs.items():
        home = tmp_path / host
        script = (f"{sys.executable} -m cli --home {home} --db '{pg_url}' vector extract --aligned {tiny_models[a]} "
                  f"--degraded {tiny_models[d]} --name v-{host} && {sys.executable} -m cli --home {home} --db "
                  f"'{pg_url}' patch {tiny_models['llama']} --vector v-{host} --coefficients uniform:0.25 "
                  f"--out {tmp_path / ('patched-' + host)}")  # fmt: skip
        procs.append(subprocess.Popen(["bash", "-c", script], env=s3_env, text=True, stdout=subprocess.PIPE,
                                      stderr=subprocess.PIPE))  # fmt: skip
    for p in procs:
        out, err = p.communicate(timeout=300)
        assert p.returncode == 0, err
    rep = sg_json(tmp_path / "admin", "verify", env=s3_env, db=pg_url)
    assert rep["ok"], rep["problems"]
    events = sg_json(tmp_path / "admin", "audit", "log", env=s3_env, db=pg_url)
    seqs = sorted(e["seq"] for e in events["events"])
    assert seqs == list(range(1, len(seqs) + 1))  # one linear chain, no gap, no fork
    kinds = [e["kind"] for e in events["events"]]
    assert kinds.count("vector.register") == 2 and sum(k.startswith("patch") for k in kinds) == 2
    assert len(keys(s3_endpoint, bucket)) == rep["blobs_checked"] > 0


def test_migrate_a_local_store_to_a_bucket_resumes_after_a_failure(tmp_path: Path, bucket: str, s3_endpoint: str,
                                                                   s3_env: dict[str, str],
                                                                   tiny_models: dict[str, Path]) -> None:  # fmt: skip
    home = tmp_path / "home"
    sg(home, "vector", "extract", "--aligned", str(tiny_models["llama"]), "--degraded", str(tiny_models["llama_b"]),
       "--name", "v", env=s3_env)  # fmt: skip
    local = sorted(p.name for p in (home / "store" / "blobs").rglob("*") if p.is_file())
    url = f"s3://{bucket}/moved"
    dry = sg_json(home, "store", "migrate", "--to", url, "--dry-run", env=s3_env)
    assert (dry["copied"], dry["present"], dry["switched"]) == (len(local), 0, False)
    assert keys(s3_endpoint, bucket) == [] and sg_json(home, "store", "info", env=s3_env)["store"] == "local"

    proxy = FaultProxy(s3_endpoint)
    try:  # the first upload goes through, none after it: the command fails, the catalog stays local
        proxy.add("PUT", "/moved/blobs/", "pass", times=1)
        proxy.add("PUT", "/moved/blobs/", "drop-request", times=-1)
        failed = sg(home, "store", "migrate", "--to", url, env={**s3_env, "SAFEGENE_STORE_ENDPOINT": proxy.url},
                    check=False)  # fmt: skip
    finally:
        proxy.close()
    assert failed.returncode == 9 and "PutObject" in failed.stderr
    assert len(keys(s3_endpoint, bucket)) == 1
    assert sg_json(home, "store", "info", env=s3_env)["store"] == "local"

    done = sg_json(home, "store", "migrate", "--to", url, env=s3_env)
    assert (done["copied"], done["present"], done["switched"]) == (len(local) - 1, 1, True)
    assert [k.rsplit("/", 1)[1] for k in keys(s3_endpoint, bucket)] == local
    assert sg_json(home, "store", "info", env=s3_env)["store"] == url
    assert sg_json(home, "verify", env=s3_env)["ok"]
    sg(home, "patch", str(tiny_models["llama_b"]), "--vector", "v", "--coefficients", "uniform:0.5",
       "--out", str(tmp_path / "patched"), env=s3_env)  # fmt: skip
    back = sg_json(home, "store", "migrate", "--to", "local", env=s3_env)
    assert (back["copied"], back["present"]) == (0, len(local))  # the local copies were left in place
    assert sg_json(home, "verify", env=s3_env)["ok"]


def test_a_writer_killed_mid_upload_leaves_nothing_visible(tmp_path: Path, bucket: str, s3_endpoint: str,
                                                           s3_env: dict[str, str],
                                                           tiny_models: dict[str, Path]) -> None:  # fmt: skip
    env = {**s3_env, "SAFEGENE_S3_MULTIPART_THRESHOLD": "1"}  # every blob goes up in parts
    extract = ["vector", "extract", "--aligned", str(tiny_models["llama"]), "--degraded",
               str(tiny_models["llama_b"]), "--name", "v"]  # fmt: skip
    log = tmp_path / "points.log"  # a counting run elsewhere finds the first "part uploaded" point
    sg(tmp_path / "counting", "init", env=env, store=f"s3://{bucket}/counting")
    sg(tmp_path / "counting", *extract, env={**env, "SAFEGENE_FAULT_KILL_AT": "count", "SAFEGENE_FAULT_LOG": str(log)},
       store=f"s3://{bucket}/counting")  # fmt: skip
    point = next(line.split("\t")[0] for line in log.read_text().splitlines() if line.endswith("s3.part-uploaded"))
    home, url = tmp_path / "home", f"s3://{bucket}/team"
    sg(home, "init", env=env, store=url)
    killed = sg(home, *extract, env={**env, "SAFEGENE_FAULT_KILL_AT": point}, check=False)
    assert killed.returncode == -9
    assert [k for k in keys(s3_endpoint, bucket) if k.startswith("team/")] == []
    assert [u["Key"][:5] for u in s3_admin(s3_endpoint).list_multipart_uploads(Bucket=bucket)["Uploads"]] == ["team/"]
    rep = sg_json(home, "verify", env=env)
    assert rep["ok"] and any(r.startswith("temp file upload") for r in rep["removable"])
    assert sg_json(home, "gc", "--grace", "0", env=env)["removed_temp_files"]
    assert not s3_admin(s3_endpoint).list_multipart_uploads(Bucket=bucket).get("Uploads")
    sg(home, *extract, env=env)
    assert sg_json(home, "verify", env=env)["ok"]


def test_the_read_cache_downloads_each_slice_once(tmp_path: Path, bucket: str, s3_endpoint: str,
                                                  s3_env: dict[str, str], tiny_models: dict[str, Path]) -> None:  # fmt: skip
    home = tmp_path / "home"
    proxy = FaultProxy(s3_endpoint)
    try:
        env = {**s3_env, "SAFEGENE_STORE_ENDPOINT": proxy.url}
        sg(home, "vector", "extract", "--aligned", str(tiny_models["llama"]), "--degraded",
           str(tiny_models["llama_b"]), "--name", "v", env=env, store=f"s3://{bucket}/team")  # fmt: skip
        n_blobs = len(keys(s3_endpoint, bucket))

        def blob_gets() -> int:
            return sum(1 for m, p in proxy.requests if m == "GET" and "/team/blobs/" in p)

        for i, target in enumerate(["llama_b", "llama", "llama_b"]):
            before = blob_gets()
            sg(home, "patch", str(tiny_models[target]), "--vector", "v", "--coefficients", "uniform:0.5",
               "--out", str(tmp_path / f"p{i}"), env=env)  # fmt: skip
            assert blob_gets() - before == (n_blobs if i == 0 else 0)
        no_cache = {**env, "SAFEGENE_CACHE_MAX_BYTES": "0"}
        before = blob_gets()
        sg(home, "patch", str(tiny_models["llama"]), "--vector", "v", "--coefficients", "uniform:0.5",
           "--out", str(tmp_path / "p-nocache"), env=no_cache)  # fmt: skip
        assert blob_gets() - before == n_blobs
    finally:
        proxy.close()


def test_a_missing_bucket_or_credentials_is_one_line(tmp_path: Path, s3_env: dict[str, str]) -> None:
    missing = sg(tmp_path / "h1", "init", env=s3_env, store="s3://no-such-bucket-here/x", check=False)
    assert missing.returncode == 9 and "create the bucket" in missing.stderr and len(missing.stderr.splitlines()) == 1
    assert not (tmp_path / "h1" / "catalog.db").exists()  # nothing was created
    bare = {k: v for k, v in s3_env.items() if not k.startswith("AWS_")}
    bare.update({"AWS_EC2_METADATA_DISABLED": "true", "AWS_CONFIG_FILE": os.devnull,
                 "AWS_SHARED_CREDENTIALS_FILE": os.devnull})  # fmt: skip
    nocreds = sg(tmp_path / "h2", "init", env=bare, store="s3://some-bucket/x", check=False)
    assert nocreds.returncode == 9 and "AWS_ACCESS_KEY_ID" in nocreds.stderr


@pytest.mark.parametrize("url", ["s3://../etc", "s3://Bad_Bucket/x", "ftp://host/x", "relative/dir"])
def test_a_hostile_store_url_is_refused_before_anything_is_written(tmp_path: Path, s3_env: dict[str, str],
                                                                   url: str) -> None:  # fmt: skip
    proc = sg(tmp_path / "home", "init", env=s3_env, store=url, check=False)
    assert proc.returncode == 9 and len(proc.stderr.splitlines()) == 1

"""Publishing folders (patch --out, PEFT export) and judging temp files across hosts."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from cli.main import cli
from registry.api import Registry
from registry.checkpoints.reader import Checkpoint
from registry.errors import AlreadyExistsError
from registry.store import atomic
from registry.store.blobs import BlobStore
from registry.store.leases import host_token


@pytest.fixture(params=["renameat2", "fallback"])
def publish_mode(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    if request.param == "fallback":  # a kernel or file system without renameat2
        monkeypatch.setattr(atomic, "_RENAMEAT2", None)
    return str(request.param)


def _new_folder(out: Path, *, force: bool, marker: str) -> Path:
    tmp, _ = atomic.prepare_output(out, force=force)
    (tmp / "config.json").write_text("{}")
    (tmp / "model.safetensors").write_text(marker)
    return tmp


def test_a_destination_that_appears_meanwhile_is_never_removed(tmp_path: Path, publish_mode: str) -> None:
    out = tmp_path / "out"
    tmp = _new_folder(out, force=False, marker="new")
    out.mkdir()  # another writer created it after our start check
    (out / "theirs.txt").write_text("keep me")
    with pytest.raises(AlreadyExistsError, match="nothing was removed"):
        atomic.publish(tmp, out, force=False, replaceable=atomic.is_model_folder)
    assert (out / "theirs.txt").read_text() == "keep me"


def test_force_only_replaces_a_model_folder(tmp_path: Path, publish_mode: str) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("not a model")
    with pytest.raises(AlreadyExistsError, match="not a model folder"):
        atomic.prepare_output(out, force=True, replaceable=atomic.is_model_folder, what="model folder")
    tmp = _new_folder(tmp_path / "elsewhere", force=False, marker="new")
    with pytest.raises(AlreadyExistsError, match="not a model folder"):
        atomic.publish(tmp, out, force=True, replaceable=atomic.is_model_folder, what="model folder")
    assert (out / "notes.txt").read_text() == "not a model"


def test_force_swaps_a_model_folder_and_leaves_nothing_beside(tmp_path: Path, publish_mode: str) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "config.json").write_text("{}")
    (out / "model.safetensors").write_text("old")
    tmp = _new_folder(out, force=True, marker="new")
    atomic.publish(tmp, out, force=True, replaceable=atomic.is_model_folder)
    assert (out / "model.safetensors").read_text() == "new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_cli_patch_force_refuses_a_folder_that_is_not_a_model(tmp_path: Path, tiny_models: dict[str, Path]) -> None:
    home = tmp_path / "home"
    with Registry.open(home) as reg:
        reg.extract_vector(tiny_models["llama"], tiny_models["llama_b"], name="v")
    out = tmp_path / "precious"
    out.mkdir()
    (out / "thesis.tex").write_text("years of work")
    args = ["--home", str(home), "patch", str(tiny_models["llama_b"]), "--vector", "v", "--out", str(out),
            "--coefficients", "uniform", "--layers", "all"]
    res = CliRunner().invoke(cli, [*args, "--force"])
    assert res.exit_code == 4 and "not a model folder" in res.stderr, res.stderr
    assert [p.name for p in out.iterdir()] == ["thesis.tex"]
    res = CliRunner().invoke(cli, args)  # no --force: refused, nothing removed
    assert res.exit_code == 4 and "--force" in res.stderr
    shutil.rmtree(out)
    assert CliRunner().invoke(cli, args).exit_code == 0
    first = Checkpoint(out).content_hash()
    assert CliRunner().invoke(cli, [*args, "--force"]).exit_code == 0  # a model folder is replaced
    assert Checkpoint(out).content_hash() == first
    assert sorted(p.name for p in tmp_path.iterdir()) == ["home", "precious"]


_KILL_AFTER_SWAP = """
import os, signal, sys
from pathlib import Path
from registry.store import atomic
out = Path(sys.argv[1])
tmp, lease = atomic.prepare_output(out, force=True, lease_dir=Path(sys.argv[2]))
(tmp / "config.json").write_text("{}")
(tmp / "model.safetensors").write_text("new")
atomic.crashpoint = lambda label: os.kill(os.getpid(), signal.SIGKILL) if label == sys.argv[3] else None
atomic.publish(tmp, out, force=True, replaceable=atomic.is_model_folder)
"""


@pytest.mark.parametrize("point", ["publish.swapped", "publish.moved-aside"])
def test_sigkill_during_a_forced_swap_never_leaves_the_name_empty(tmp_path: Path, point: str) -> None:
    out, leases = tmp_path / "out", tmp_path / "leases"
    out.mkdir()
    (out / "config.json").write_text("{}")
    (out / "model.safetensors").write_text("old")
    code = _KILL_AFTER_SWAP
    if point == "publish.moved-aside":  # only the fallback path has this point
        code = code.replace("from registry.store import atomic\n", "from registry.store import atomic\natomic._RENAMEAT2 = None\n")
    proc = subprocess.run([sys.executable, "-c", code, str(out), str(leases), point], capture_output=True, text=True)
    assert proc.returncode == -9, proc.stderr
    if point == "publish.swapped":
        assert (out / "model.safetensors").read_text() == "new"
    else:  # killed between the two renames of the fallback: the old folder waits beside, named for gc
        aside = [p for p in tmp_path.iterdir() if atomic.OLD_MARK in p.name]
        assert len(aside) == 1 and (aside[0] / "model.safetensors").read_text() == "old"
    # the lease names what is left beside; gc's reclaim removes it
    for lease in leases.iterdir():
        atomic.reclaim_partial(lease)
    left = sorted(p.name for p in tmp_path.iterdir() if p.name not in ("out", "leases"))
    assert all(atomic.OLD_MARK in n for n in left)  # the fallback's aside folder is named for gc too


def test_temp_files_are_judged_by_pid_only_on_their_own_host(tmp_path: Path) -> None:
    store = BlobStore(tmp_path / "store")
    store.ensure()
    me, live, dead = host_token(), os.getpid(), 2**22 + 12345  # above pid_max on Linux: never alive
    files = {
        "mine-live-old": f"{'a' * 64}.{me}.{live}.aa.tmp",
        "mine-dead-young": f"{'b' * 64}.{me}.{dead}.bb.tmp",
        "other-live-pid-young": f"{'c' * 64}.otherhost.{live}.cc.tmp",
        "other-dead-pid-young": f"{'d' * 64}.otherhost.{dead}.dd.tmp",
        "other-old": f"{'e' * 64}.otherhost.{live}.ee.tmp",
    }
    for name in files.values():
        (store.tmp_dir / name).write_bytes(b"x")
    hour_ago = time.time() - 7200
    for key in ("mine-live-old", "other-old"):
        os.utime(store.tmp_dir / files[key], (hour_ago, hour_ago))
    stale = {p.name for p in store.stale_temp_files(older_than_s=3600)}
    assert stale == {files["mine-dead-young"], files["other-old"]}

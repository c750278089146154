"""`safegene serve` as a user runs it: a real uvicorn process over a real registry home.

Imported by conftest via ``pytest_plugins``. The demo's home (the quick toy world
taken through `safegene demo --quick`) is built once per session and served by
one server process per session; tests that need other settings start their own.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from click.testing import CliRunner

from cli.main import cli
from registry.toy.build import ToyWorld

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Server:
    url: str
    log: Path
    proc: subprocess.Popen[bytes]

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")


def start_server(home: Path, log: Path, *extra: str, db_url: str | None = None,
                 env: dict[str, str] | None = None, timeout_s: float = 60.0) -> Server:  # fmt: skip
    """`python -m cli --home HOME serve --port P ...` in a new process, waited for until it answers."""
    port = free_port()
    args = [sys.executable, "-m", "cli", "--home", str(home)] + (["--db", db_url] if db_url else [])
    args += ["serve", "--port", str(port), *extra]
    full_env = {**os.environ, "PYTHONPATH": str(ROOT), **(env or {})}
    full_env.pop("SAFEGENE_DB_URL", None) if db_url is None else None
    fh = log.open("wb")
    proc = subprocess.Popen(args, stdout=fh, stderr=subprocess.STDOUT, env=full_env, cwd=ROOT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"safegene serve exited with {proc.returncode}: {log.read_text()[-2000:]}")
        try:
            if httpx.get(url + "/api/health", timeout=2).status_code == 200:
                return Server(url, log, proc)
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    proc.kill()
    raise RuntimeError(f"safegene serve did not answer within {timeout_s} s: {log.read_text()[-2000:]}")


def stop_server(server: Server) -> None:
    server.proc.terminate()
    try:
        server.proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        server.proc.kill()
        server.proc.wait()


@pytest.fixture(scope="session")
def demo_home(tmp_path_factory: pytest.TempPathFactory, quick_world: ToyWorld) -> Path:
    """A registry home after `safegene demo --quick`: one family, one vector, patched models, events."""
    import shutil

    work = tmp_path_factory.mktemp("serve-demo")
    shutil.copytree(quick_world.root, work / "work" / quick_world.root.name)
    res = CliRunner().invoke(cli, ["--home", str(work / "home"), "demo", "--quick", "--workdir", str(work / "work")],
                             catch_exceptions=False)  # fmt: skip
    assert res.exit_code == 0, res.output
    return work / "home"


@pytest.fixture(scope="session")
def demo_server(tmp_path_factory: pytest.TempPathFactory, demo_home: Path) -> Iterator[Server]:
    """`safegene serve` over the demo's home, with one token (actor ``alice``)."""
    log = tmp_path_factory.mktemp("serve-log") / "server.log"
    server = start_server(demo_home, log, env={"SAFEGENE_SERVE_TOKENS": "alice:alice-token-0123456789"})
    try:
        yield server
    finally:
        stop_server(server)

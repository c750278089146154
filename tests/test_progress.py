"""Progress bars: shown on a terminal, never in --json or piped output."""

from __future__ import annotations

import os
import pty
import subprocess
import sys
from pathlib import Path


def _run(args: list[str], *, tty: bool) -> tuple[str, str]:
    """Run the CLI with stderr on a pseudo-terminal (tty) or a pipe; return (stdout, stderr)."""
    env = {**os.environ, "COLUMNS": "100", "TERM": "xterm"}
    cmd = [sys.executable, "-m", "cli", *args]
    if not tty:
        res = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
        return res.stdout, res.stderr
    master, slave = pty.openpty()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=slave, env=env)
    os.close(slave)
    chunks = []
    while True:
        try:
            chunk = os.read(master, 4096)
        except OSError:
            break
        if not chunk:
            break
        chunks.append(chunk)
    out, _ = proc.communicate(timeout=300)
    os.close(master)
    return out.decode(), b"".join(chunks).decode(errors="replace")


def test_progress_on_terminal_only(tmp_path: Path, tiny_models: dict[str, Path]) -> None:
    home = ["--home", str(tmp_path / "home")]
    _, err = _run([*home, "model", "add", str(tiny_models["llama"])], tty=True)
    assert "registering" in err or "hashing tensors" in err, err
    _, err = _run([*home, "model", "add", str(tiny_models["qwen2"])], tty=False)
    assert "registering" not in err and "hashing" not in err and "\x1b[" not in err
    out, err = _run([*home, "--json", "model", "add", str(tiny_models["gpt2"])], tty=True)
    assert "registering" not in err and "hashing" not in err
    assert out.lstrip().startswith("{") and '"hash"' in out

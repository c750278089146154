"""What an operator decides about a server: who may call it, and what it may reveal.

Tokens come from a file (``--tokens FILE``, one ``ACTOR:TOKEN`` a line, ``#``
comments) and/or the environment (``SAFEGENE_SERVE_TOKENS="alice:tok1,bob:tok2"``).
A request that presents a token is logged under its actor; a wrong token is
refused (401) even where no token is needed, so a typo never passes unnoticed.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import ConfigurationError

MIN_TOKEN_CHARS = 16
TOKENS_ENV = "SAFEGENE_SERVE_TOKENS"


@dataclass(frozen=True)
class ServeConfig:
    """Settings of one server.

    Args:
        tokens: bearer token -> actor name.
        require_token: every request (reads too) needs a known token.
        expose_paths: show checkpoints' file-system paths (hidden by default).
        max_upload_bytes: the most an identify upload may send (safetensors headers only).
    """

    tokens: Mapping[str, str] = field(default_factory=dict)
    require_token: bool = False
    expose_paths: bool = False
    max_upload_bytes: int = 16 * 1024 * 1024 + 8


def load_tokens(path: Path | None = None, *, env: Mapping[str, str] | None = None) -> dict[str, str]:
    """Bearer tokens (token -> actor) from ``path`` and ``$SAFEGENE_SERVE_TOKENS``.

    Raises:
        ConfigurationError: a malformed entry, a token shorter than 16 characters, or a reused token.
    """
    entries: list[tuple[str, str]] = []
    if path is not None:
        try:
            lines = path.read_text(encoding="utf-8").splitlines()
        except OSError as exc:
            raise ConfigurationError(f"cannot read the tokens file {path.name}: {exc.strerror}") from None
        entries += [(f"{path.name} line {i}", ln.strip()) for i, ln in enumerate(lines, 1)
                    if ln.strip() and not ln.strip().startswith("#")]  # fmt: skip
    raw = (env if env is not None else os.environ).get(TOKENS_ENV, "")
    entries += [(TOKENS_ENV, e.strip()) for e in raw.split(",") if e.strip()]
    tokens: dict[str, str] = {}
    for where, entry in entries:
        actor, sep, token = entry.partition(":")
        if not sep or not actor.strip() or len(token.strip()) < MIN_TOKEN_CHARS:
            raise ConfigurationError(f"{where}: write ACTOR:TOKEN with a token of at least {MIN_TOKEN_CHARS} characters")
        if token.strip() in tokens:
            raise ConfigurationError(f"{where}: this token is already given to {tokens[token.strip()]!r}")
        tokens[token.strip()] = actor.strip()[:200]
    return tokens

"""Query and path parameters shared by the API and the pages: bounded, printable, validated before use."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Path, Query, Request

from ..api import Registry
from .config import ServeConfig

PRINTABLE = r"^[^\x00-\x1f\x7f]*$"
MAX_LIMIT = 200

Offset = Annotated[int, Query(ge=0, le=10_000_000, description="rows to skip (stable order)")]
Limit = Annotated[int, Query(ge=1, le=MAX_LIMIT, description=f"rows per page, at most {MAX_LIMIT}")]
Text = Annotated[str | None, Query(max_length=200, pattern=PRINTABLE)]
Ref = Annotated[str, Path(min_length=1, max_length=200, pattern=PRINTABLE,
                          description="a name or a (prefix of a) content hash")]  # fmt: skip
HashPrefix = Annotated[str, Query(min_length=4, max_length=64, pattern=r"^[0-9a-fA-F]+$")]


# Dependencies are coroutines: FastAPI runs a plain function's dependency in the thread pool, a
# thread hop (and a wait for a free thread under load) per dependency per request.
async def registry(request: Request) -> Registry:
    reg: Registry = request.app.state.registry
    return reg


async def config(request: Request) -> ServeConfig:
    cfg: ServeConfig = request.app.state.config
    return cfg


Reg = Annotated[Registry, Depends(registry)]
Cfg = Annotated[ServeConfig, Depends(config)]

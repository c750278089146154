"""The toy safety world: tiny real Hugging Face checkpoints and synthetic probes.

Only this package knows the world's text format; everything else in
``registry`` treats its folders and JSONL files like any other model/probes.
The builders (which import transformers, ≈2 s) load on first use, so that
``FAMILIES`` is cheap to import (the CLI needs it at start-up).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

FAMILIES = ("llama", "qwen2", "mistral", "gpt2")

if TYPE_CHECKING:
    from .build import ToyWorld, build_world, load_world
    from .world import make_tokenizer

__all__ = ["FAMILIES", "ToyWorld", "build_world", "load_world", "make_tokenizer"]


def __getattr__(name: str) -> Any:
    if name in ("ToyWorld", "build_world", "load_world"):
        from . import build

        return getattr(build, name)
    if name == "make_tokenizer":
        from .world import make_tokenizer

        return make_tokenizer
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

"""The toy safety world: tiny real Hugging Face checkpoints and synthetic probes.

Only this package knows the world's text format; everything else in
``registry`` treats its folders and JSONL files like any other model/probes.
"""

from .build import FAMILIES, ToyWorld, build_world, load_world
from .world import make_tokenizer

__all__ = ["FAMILIES", "ToyWorld", "build_world", "load_world", "make_tokenizer"]

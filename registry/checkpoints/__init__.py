"""Checkpoint folders: lazy, validated safetensors reading and content hashing
(``reader``), family fingerprints and compatibility (``family``), the
``safegene.*`` provenance metadata of patched folders (``provenance``) and GGUF
import (``gguf``)."""

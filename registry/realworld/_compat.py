"""The shared helpers the real world uses, imported from where they live."""

from __future__ import annotations

from ..checkpoints.reader import Checkpoint
from ..evaluation import textio
from ..evaluation.judges import RefusalKeywordJudge, is_degenerate
from ..evaluation.probes import Probe, load_probes, write_probes
from ..evaluation.scorers import JsonFields

__all__ = [
    "Checkpoint",
    "JsonFields",
    "Probe",
    "RefusalKeywordJudge",
    "is_degenerate",
    "load_probes",
    "textio",
    "write_probes",
]

"""The public registry handle: every operation over one catalog and store.

Example:
    >>> from registry import Registry
    >>> reg = Registry.open("/tmp/sg-home")                       # doctest: +SKIP
    >>> reg.add_model("world/aligned", role="aligned")            # doctest: +SKIP
    >>> vec = reg.extract_vector("world/aligned", "world/degraded", name="llama-safety")  # doctest: +SKIP
"""

from __future__ import annotations

from ._core import ROLES, InitResult, current_actor, default_home
from .audit.integrity import AuditOps
from .method.extract import VectorOps
from .method.patcher import PatchOps

__all__ = ["ROLES", "InitResult", "Registry", "current_actor", "default_home"]


class Registry(AuditOps, PatchOps, VectorOps):
    """A catalog (SQL) and a blob store (directory) under one home.

    Args:
        home: registry home; default ``$SAFEGENE_HOME`` or ``~/.safegene``.
        db_url: catalog URL; default ``$SAFEGENE_DB_URL`` or a SQLite file in home.

    Use :meth:`open` rather than the constructor: it creates an empty catalog
    on first use and refuses an outdated one.
    """

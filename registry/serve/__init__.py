"""`safegene serve`: a JSON API and server-rendered pages over the registry (read-only by default)."""

from .app import create_app, run
from .config import ServeConfig, load_tokens

__all__ = ["ServeConfig", "create_app", "load_tokens", "run"]

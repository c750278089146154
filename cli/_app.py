"""The application context shared by every command (registry handle, output)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import click

from registry.api import Registry

from ._output import Output


@dataclass
class App:
    home: Path | None
    db_url: str | None
    out: Output
    sign_key: Path | None = None
    store_url: str | None = None
    store_endpoint: str | None = None
    _registry: Registry | None = field(default=None, repr=False)

    def registry(self, *, create: bool = True) -> Registry:
        """The registry, opened on first use (an empty catalog is created)."""
        if self._registry is None:
            self._registry = Registry.open(self.home, self.db_url, create=create, sign_key=self.sign_key,
                                           store_url=self.store_url, store_endpoint=self.store_endpoint)
        return self._registry

    def raw_registry(self) -> Registry:
        """The registry without any schema check (for `init` and `db`)."""
        if self._registry is None:
            self._registry = Registry(self.home, self.db_url, sign_key=self.sign_key, store_url=self.store_url,
                                      store_endpoint=self.store_endpoint)
        return self._registry

    def close(self) -> None:
        if self._registry is not None:
            self._registry.close()


pass_app = click.make_pass_decorator(App)

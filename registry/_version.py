"""The package version, for ``registry.__version__``, audit events and bundles (imports nothing of ours)."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("safegene")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.0.0+unknown"

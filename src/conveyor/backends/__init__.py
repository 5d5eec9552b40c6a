"""Storage engines behind one contract (``base.Backend``), picked by URL scheme.

Drivers are imported only when their scheme is used, so the core stays light.
"""

from __future__ import annotations

from importlib import import_module
from urllib.parse import urlsplit

from conveyor.backends.base import Backend
from conveyor.errors import ConfigError

__all__ = ["Backend", "open_backend"]

_ENGINES = {
    "memory": ("conveyor.backends.memory", "MemoryBackend", None),
    "sqlite": ("conveyor.backends.sqlite", "SQLiteBackend", None),
    "redis": ("conveyor.backends.redis", "RedisBackend", "redis"),
    "rediss": ("conveyor.backends.redis", "RedisBackend", "redis"),
    "postgresql": ("conveyor.backends.postgres", "PostgresBackend", "postgres"),
    "postgres": ("conveyor.backends.postgres", "PostgresBackend", "postgres"),
}


def open_backend(url: str) -> Backend:
    """The backend object for ``url`` (not connected yet)."""
    scheme = urlsplit(url).scheme
    if scheme not in _ENGINES:
        raise ConfigError(
            f"unknown backend URL scheme {scheme!r} in {url.split('@')[-1]!r}; "
            f"expected one of {sorted(_ENGINES)}"
        )
    module_name, class_name, extra = _ENGINES[scheme]
    try:
        module = import_module(module_name)
    except ImportError as exc:
        if extra is None:
            raise
        raise ConfigError(
            f"the {scheme} backend needs its extra: pip install 'conveyor[{extra}]' ({exc})"
        ) from exc
    backend: Backend = getattr(module, class_name)(url)
    return backend

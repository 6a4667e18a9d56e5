"""Backends, chosen by URL scheme and imported only when used.

A new backend is one module with a ``from_url(url, **options)`` function and one entry
in ``SCHEMES``; it must pass the contract suite in ``tests/contract``.
"""

from __future__ import annotations

import importlib
from typing import Any
from urllib.parse import urlsplit

from mqctl.core.backend import Backend
from mqctl.core.errors import ConfigError

SCHEMES: dict[str, str] = {
    "memory": "mqctl.backends.memory",
    "redis": "mqctl.backends.redis",
    "rediss": "mqctl.backends.redis",
    "redis+cluster": "mqctl.backends.cluster",
    "rediss+cluster": "mqctl.backends.cluster",
    "nats": "mqctl.backends.nats",
}


def open_backend(url: str, **options: Any) -> Backend:
    """The backend for ``url``, not yet connected (connections open on first use)."""
    if not isinstance(url, str) or "://" not in url:
        raise ConfigError(f"Invalid broker URL {url!r}; expected e.g. memory:// or redis://127.0.0.1:6379/0.")
    scheme = urlsplit(url).scheme.lower()
    module_name = SCHEMES.get(scheme)
    if module_name is None:
        raise ConfigError(f"Unknown broker scheme {scheme!r}; expected one of: {', '.join(sorted(SCHEMES))}.")
    module = importlib.import_module(module_name)
    backend: Backend = module.from_url(url, **options)
    return backend

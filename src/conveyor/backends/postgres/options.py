"""The ``postgresql://`` URL: conveyor's own query options, and the rest for the driver."""

from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from conveyor.errors import ConfigError

__all__ = ["PgOptions", "parse_url"]

_SCHEMA = re.compile(r"[a-z_][a-z0-9_]{0,47}")
_TRUE = {"true": True, "1": True, "yes": True, "on": True,
         "false": False, "0": False, "no": False, "off": False}


@dataclass(frozen=True, slots=True)
class PgOptions:
    """What a ``postgresql://`` URL asks for.

    ``schema``: where conveyor's tables live (created on first use). ``listen``: wake workers by
    LISTEN/NOTIFY (False: poll every ``poll`` seconds, for PgBouncer in transaction pooling
    mode, which does not carry LISTEN; also no server-side prepared statements then).
    ``poll``: how often idle workers look for work while they cannot be woken (no listener, or
    it is reconnecting). ``pool_min``/``pool_max``: connections the pool keeps at least (0:
    opened on demand, closed after 5 idle minutes) and opens at most.
    """

    dsn: str  # for the driver: the URL without conveyor's options
    schema: str = "conveyor"
    listen: bool = True
    poll: float = 0.5
    pool_min: int = 0
    pool_max: int = 10


def _number(name: str, text: str, low: float, high: float) -> float:
    try:
        value = float(text)
    except ValueError:
        raise ConfigError(f"postgresql URL option {name}={text!r} must be a number") from None
    if not low <= value <= high:
        raise ConfigError(f"postgresql URL option {name} must be from {low:g} to {high:g}, got {text!r}")
    return value


def parse_url(url: str, safe_url: str) -> PgOptions:
    """Split ``url`` into conveyor's options and the driver's DSN; ConfigError if malformed."""
    parts = urlsplit(url)
    if parts.scheme not in ("postgresql", "postgres"):
        raise ConfigError(f"expected postgresql://user@host:port/database, got {safe_url!r}")
    ours: dict[str, str] = {}
    theirs: list[tuple[str, str]] = []
    for name, value in parse_qsl(parts.query, keep_blank_values=True):
        if name in ("schema", "listen", "poll", "pool_min", "pool_max"):
            ours[name] = value
        else:
            theirs.append((name, value))  # sslmode, application_name, ...: asyncpg's
    schema = ours.get("schema", "conveyor")
    if not _SCHEMA.fullmatch(schema):
        raise ConfigError(
            f"postgresql URL option schema={schema!r}: use 1 to 48 lowercase letters, digits "
            "and underscores, not starting with a digit"
        )
    listen_text = ours.get("listen", "true").lower()
    if listen_text not in _TRUE:
        raise ConfigError(f"postgresql URL option listen={listen_text!r} must be true or false")
    pool_min = int(_number("pool_min", ours.get("pool_min", "0"), 0, 1000))
    pool_max = int(_number("pool_max", ours.get("pool_max", "10"), 1, 1000))
    if pool_min > pool_max:
        raise ConfigError("postgresql URL options: pool_min must not exceed pool_max")
    dsn = urlunsplit(parts._replace(scheme="postgresql", query=urlencode(theirs)))
    return PgOptions(
        dsn=dsn, schema=schema, listen=_TRUE[listen_text],
        poll=_number("poll", ours.get("poll", "0.5"), 0.001, 3600), pool_min=pool_min,
        pool_max=pool_max,
    )

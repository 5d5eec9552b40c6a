"""``postgresql://``: jobs in PostgreSQL, shared by workers on many machines.

Every verb is one call of a SQL function in conveyor's own schema (``sql/``), so it is one round
trip and one transaction whatever the batch size: enqueue many, claim many, complete many,
renew and release many. Times that decide anything (lease expiry, when a scheduled job is due)
come from the server's clock. Claims take rows with ``FOR UPDATE SKIP LOCKED`` from a partial
index that holds only claimable jobs, so finished jobs (a million is normal) are never read on
the claim path; lanes and unique values are kept by the database itself (lane rows locked in
one order, a unique partial index). ``docs/postgres.md`` explains the design.

Workers are woken by LISTEN/NOTIFY (:mod:`.listener`): enqueue notifies ``<schema>.wake`` in its
transaction, which PostgreSQL delivers at commit, so :func:`~.transitions.enqueue_on` can store
jobs inside an application's own open transaction. With ``?listen=false`` (PgBouncer in
transaction pooling mode) workers poll instead.

URL: ``postgresql://user:password@host:port/database`` (or ``postgres://``), with conveyor's
query options ``schema`` (default ``conveyor``), ``listen`` (default true), ``poll`` (seconds,
default 0.5), ``pool_min``/``pool_max`` (default 0/10); other options go to asyncpg
(``sslmode``, ...). The schema is created and upgraded on first use, or by ``conveyor migrate``.

Modules: :mod:`.options` (the URL), :mod:`.connection` (the pool, driver errors), :mod:`.schema`
(migrations), :mod:`.claims`, :mod:`.transitions`, :mod:`.admin` (the verbs), :mod:`.listener`.
"""

from conveyor.backends.postgres.admin import AdminVerbs
from conveyor.backends.postgres.claims import ClaimVerbs
from conveyor.backends.postgres.transitions import TransitionVerbs, enqueue_on

__all__ = ["PostgresBackend", "enqueue_on"]


class PostgresBackend(ClaimVerbs, TransitionVerbs, AdminVerbs):
    """Jobs in a PostgreSQL database (asyncpg, pooled); see the package docstring."""

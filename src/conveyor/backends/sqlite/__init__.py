"""``sqlite:///path.db``: the embedded default. Durable, and safe for several processes on one machine.

Every verb is one ``BEGIN IMMEDIATE`` transaction run on a dedicated thread (the driver blocks, the
event loop must not). WAL lets readers run beside the single writer; the busy timeout makes writers
queue up instead of raising "database is locked". Workers in other processes notice commits through
``PRAGMA data_version``, a read of shared memory, so an idle worker costs next to nothing.

Lanes are kept by a ``blocked`` flag: a keyed job is stored blocked when its lane already holds an
unfinished job, and the lane's next job is unblocked when its head finishes. Claim then reads a
single partial index of claimable jobs in (priority, position) order.
"""

from __future__ import annotations

from conveyor.backends.sqlite.admin import AdminVerbs
from conveyor.backends.sqlite.claims import ClaimVerbs
from conveyor.backends.sqlite.transitions import TransitionVerbs

__all__ = ["SQLiteBackend"]


class SQLiteBackend(ClaimVerbs, TransitionVerbs, AdminVerbs):
    """Jobs in one SQLite file (WAL), shared by every process on the machine that opens it.

    URL: ``sqlite:///relative/path.db`` or ``sqlite:////absolute/path.db``; query options
    ``synchronous=full|normal`` (default full: a committed job survives power loss) and
    ``busy_timeout`` in seconds (default 30).
    """

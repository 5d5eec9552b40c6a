"""``sqlite:///path.db``: the embedded default. Durable, and safe for several processes on one machine.

Every verb is one ``BEGIN IMMEDIATE`` transaction run on a dedicated thread (the driver blocks, the
event loop must not). WAL lets readers run beside the single writer; the busy timeout makes writers
queue up instead of raising "database is locked". Workers in other processes notice commits through
``PRAGMA data_version``, a read of shared memory, so an idle worker costs next to nothing.

Lanes are kept by a ``blocked`` flag: a keyed job is stored blocked when its lane already holds an
unfinished job, and the lane's next job is unblocked when its head finishes.

Staying fast as the store grows (finished jobs are kept for days: a million rows is normal).
Every statement reads an index range that holds only what it asks for (``EXPLAIN QUERY PLAN``
of each is checked by ``tests/integration/test_sqlite_scale.py``):

* **Claim** reads ``conveyor_jobs_ready``, a partial index of claimable jobs only (queued, or
  scheduled and already due), in (priority, position) order: no finished or delayed job is ever
  walked past. Scheduled jobs wait in ``conveyor_jobs_due`` (by due time); each claim first moves
  the due ones of its queues across (``due = 1``, at most ``PROMOTE_BATCH`` per queue, soonest
  first), in the same transaction, so priority then decides among everything due. Their status
  stays ``scheduled`` until they are claimed, as on the other backends. With several queues each
  queue's best ``limit`` are read from its own index range and merged.
* **The idle worker's next-due check** is one ``MIN(run_at)`` seek per queue in
  ``conveyor_jobs_due``.
* **stats()** reads ``conveyor_counts`` (a row per queue and status), kept in the same
  transaction as every insert, status change and delete: exact, and a handful of rows. The two
  moves every job makes (claim: into running; complete: into succeeded) are counted by those verbs
  once per batch; triggers count the rest (their ``WHEN`` skips those two for a fraction of a
  microsecond), so a drain costs about what it did before the counts.
* **list_jobs** (newest first) reads, for each non-empty (queue, status) pair asked for (the
  counts say which), the newest ``limit + offset`` of ``conveyor_jobs_list`` (queue, status, pos),
  and merges them; running jobs (no more than the workers' slots) come from their lease index,
  so the list index is not rewritten at every claim. Past 200 such pairs (listing every queue of
  a store with dozens of queues) it falls back to one pass over the table. A ``task`` filter
  reads the ranges until it finds enough jobs of that task.
* **Purge** deletes (jobs and their events) in batches of a few hundred to a couple of thousand
  jobs, each its own transaction sized to hold the writer about 10 ms, with a 30 ms pause between
  so other processes' writers, whose busy handler looks again only every 25 ms or so, get in.
* **Supersede** names the lane index and repeats its WHERE (it used to scan the table).
* **Progress** is one fenced ``UPDATE`` that numbers the event and one ``INSERT``.

Databases made by an older version are upgraded on open (``schema.py``).
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

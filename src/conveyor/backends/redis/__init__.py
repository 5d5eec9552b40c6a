"""``redis://``: jobs in Redis, shared by workers on many machines.

Every transition is one Lua script (``lua/<verb>.lua``, with ``lua/lib.lua`` prepended), so it
is atomic on the server, and each batch verb (enqueue, claim, complete, renew, release) is one
round trip whatever the batch size. Times that decide anything (lease expiry, when a scheduled
job is due) come from the Redis clock (``TIME`` inside the script), never from a worker's clock.
``lib.lua`` documents the key layout.

Workers are woken by push: enqueue publishes on ``<prefix>:wake:<queue>``, a cancel request of a
running job on ``<prefix>:cancel``, and every event on ``<prefix>:ev:<job id>``. One dedicated
pub/sub connection per backend (:mod:`.listener`) receives them; it reconnects with backoff
when Redis goes away, and while it is down waiters fall back to a bounded poll, so a Redis restart
never needs a worker restart.

Hand-off (:mod:`.handoff`): a worker whose claim came back short registers as idle for a moment,
and the next enqueue claims the job for it inside its own script and publishes the record on
``<prefix>:hand:<worker>``; ``claim()`` then returns it without a round trip.

URL: ``redis://[[user]:password@]host[:port][/db]`` (``rediss://`` for TLS), with conveyor's own
query options ``prefix`` (key namespace, default ``conveyor``) and ``retention`` (seconds a
finished job, its result and its events are kept, default 7 days); other query options go to
redis-py (``socket_timeout``, ``ssl_cert_reqs``, ...).

Modules: :mod:`.backend` (the verbs), :mod:`.connection` (running scripts), :mod:`.records`
(what crosses the wire), :mod:`.listener` (pub/sub), :mod:`.handoff`.
"""

from conveyor.backends.redis.backend import RedisBackend

__all__ = ["RedisBackend"]

"""``FastAPI(lifespan=queue.lifespan(...))``: the queue opens with the app, and a worker may run in it."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from conveyor.fastapi.dependencies import check

if TYPE_CHECKING:
    from conveyor.queue import Queue
    from conveyor.worker import Worker

__all__ = ["AppLifespan", "QueueLifespan"]

log = logging.getLogger("conveyor.fastapi")

#: an app's own lifespan, as FastAPI takes it: ``app -> async context manager``
AppLifespan = Callable[[Any], contextlib.AbstractAsyncContextManager[Mapping[str, Any] | None]]


class QueueLifespan:
    """A FastAPI lifespan that opens the queue on startup and closes it on shutdown.

    With ``worker=True`` a worker runs in the app's process: it starts once the app's own lifespan
    (``lifespan=``) has started, and on shutdown it stops claiming, lets running jobs finish within
    ``grace`` seconds and puts the rest back, before the app's own lifespan ends. So the resources
    the app's lifespan creates outlive every job.

    Use it as ``FastAPI(lifespan=queue.lifespan(worker=True, lifespan=app_lifespan))``, or inside
    your own lifespan: ``async with queue.lifespan(worker=True)(app): yield``.

    The worker runs the queue's own lifespan (``Queue(lifespan=...)``) when it starts; its tasks
    see the app's lifespan state and the queue's (which wins on a clash) as ``ctx.state``, and
    their dependencies as ``request.state``.
    """

    def __init__(
        self, queue: Queue, *, worker: bool = False, concurrency: int = 10,
        queues: Sequence[str] | None = None, grace: float | None = None,
        cpu_workers: int | None = None, lifespan: AppLifespan | None = None,
    ) -> None:
        self.queue = queue
        self.run_worker = worker
        self.concurrency = concurrency
        self.queues = list(queues) if queues is not None else None
        self.grace = grace
        self.cpu_workers = cpu_workers
        self.inner = lifespan
        #: the worker while the app runs (``worker=True``), else None
        self.worker: Worker | None = None

    def __repr__(self) -> str:
        return f"<QueueLifespan {self.queue!r} worker={self.run_worker}>"

    def __call__(self, app: Any) -> contextlib.AbstractAsyncContextManager[Any]:
        """The lifespan context for ``app`` (what FastAPI calls on startup).

        It yields what the app's own lifespan yields (its state, or None).
        """
        return self._run(app)

    @contextlib.asynccontextmanager
    async def _run(self, app: Any) -> AsyncIterator[Mapping[str, Any] | None]:
        inner: contextlib.AbstractAsyncContextManager[Mapping[str, Any] | None]
        inner = self.inner(app) if self.inner is not None else contextlib.nullcontext(None)
        async with inner as state:
            queue = self.queue
            bound = queue.app is None
            if bound:
                queue.app = app
            try:
                check(queue)
                await queue.open()
                try:
                    if self.run_worker:
                        self.worker = queue.worker(
                            concurrency=self.concurrency, queues=self.queues, grace=self.grace,
                            cpu_workers=self.cpu_workers, state=state,
                        )
                        await self.worker.start()
                    yield state
                finally:
                    try:
                        if self.worker is not None:
                            log.info("app shutting down: draining worker %s", self.worker.id)
                            await self.worker.stop()
                    finally:
                        # even when the drain fails or is cancelled (a second Ctrl-C)
                        self.worker = None
                        await queue.close()
            finally:
                if bound:
                    queue.app = None

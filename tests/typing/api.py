"""Type-checked, never run: the public API keeps argument and result types for editors.

`make test` runs mypy over this file; each `reveal`-free assignment below fails the check if a
type drifts. Lines marked `type: ignore[...]` must stay errors (mypy warns on unused ignores).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from datetime import datetime, timedelta

from conveyor import Context, Job, JobRecord, JobStatus, Queue, Retry, Task
from conveyor.errors import ConveyorError, EnqueueError, JobCancelled, JobFailed, JobTimeout
from conveyor.middleware import EnqueueNext, Middleware
from conveyor.model import ErrorInfo

queue = Queue("memory://", name="typing")


@queue.task(retries=Retry(attempts=5, backoff=2.0, jitter=True), timeout=30)
async def send_email(to: str, subject: str) -> bool:
    return True


@queue.task
def resize(path: str, width: int = 100) -> str:
    return path


@queue.task(cpu=True)
def compress(path: str) -> str:
    return path


@queue.task(key="match:{match_id}")
async def store_stats(ctx: Context, match_id: int, stats: dict[str, int]) -> None:
    await ctx.progress(0.5, "half way")


async def usage() -> None:
    await store_stats.enqueue(1, {"goals": 2})  # a leading ctx is injected, not passed
    await store_stats.enqueue(1)  # type: ignore[call-arg]
    task: Task[[str, str], bool] = send_email
    job: Job[bool] = await send_email.enqueue("a@example.com", subject="hi")
    ok: bool = await job.result(timeout=10)
    status: JobStatus = await job.status()
    later: Job[str] = await resize.options(delay=timedelta(seconds=5), priority=3).enqueue("x.png")
    name: str = await later.result()
    await send_email.enqueue("a@example.com", 3)  # type: ignore[arg-type]
    await resize.enqueue(path="x", height=3)  # type: ignore[call-arg]
    jobs = await queue.enqueue_many([resize.prepare("a.png"), resize.prepare("b.png", width=5)])
    assert isinstance(jobs, list)
    del task, ok, status, name
    errors: tuple[type[ConveyorError], ...] = (EnqueueError, JobFailed, JobCancelled, JobTimeout)
    del errors


# -- lifespan, meta and middleware (docs/observability.md) ------------------------------------
@asynccontextmanager
async def lifespan(q: Queue) -> AsyncIterator[dict[str, object]]:
    yield {"pool": "a pool"}


class Tenant(Middleware):
    async def enqueue(self, jobs: list[JobRecord], call_next: EnqueueNext) -> list[JobRecord]:
        for job in jobs:
            job.meta = {**job.meta, "tenant": "acme"}
        return await call_next(jobs)

    def after_failure(
        self, job: JobRecord, ctx: Context, error: ErrorInfo, retry_at: datetime | None
    ) -> None:
        kind: str = error["type"]
        del kind


observed = Queue("memory://", lifespan=lifespan, middleware=[Tenant()])
Queue("memory://", lifespan=42)  # type: ignore[arg-type]


@observed.task
async def tenant_of(ctx: Context) -> str:
    meta: Mapping[str, str] = ctx.meta
    state: Mapping[str, object] = ctx.state
    del state
    return meta.get("tenant", "")


async def meta_usage() -> None:
    job: Job[str] = await tenant_of.options(meta={"tenant": "a"}).enqueue()
    await tenant_of.options(meta={"n": 1}).enqueue()  # type: ignore[dict-item]
    info = await job.info()
    meta: Mapping[str, str] = info.meta
    del meta

"""Log records emitted while a job runs carry its id, task, queue and attempt."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator

import pytest
from conformance.helpers import RESULT_TIMEOUT  # tests/ is on sys.path

from conveyor import Context, Queue, Retry
from conveyor.logs import JobContextFilter, JobFormatter, JsonFormatter

log = logging.getLogger("tests.job_logs")


class Collect(logging.Handler):
    """Keeps every record it is given."""

    def __init__(self) -> None:
        super().__init__()
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@pytest.fixture
def collected() -> Iterator[Collect]:
    """Records of the root logger at INFO and up, through a JobContextFilter."""
    handler = Collect()
    handler.addFilter(JobContextFilter())
    root = logging.getLogger()
    old = root.level
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    try:
        yield handler
    finally:
        root.removeHandler(handler)
        root.setLevel(old)


async def test_records_of_async_def_and_worker_code_inside_a_job_carry_its_fields(
    collected: Collect,
) -> None:
    """The task's own logging calls (async def on the loop, def in a thread) and the worker's
    lines about the job carry job id, task, queue and attempt; a record outside a job has None."""
    queue = Queue("memory://", name="mail")

    @queue.task(name="speak", retries=Retry(attempts=2, backoff=0.0))
    async def speak(ctx: Context) -> None:
        log.info("async says %d", ctx.attempt)
        if ctx.attempt == 1:
            raise RuntimeError("again")

    @queue.task(name="speak_def")
    def speak_def() -> None:
        log.info("thread says")

    log.info("outside")
    async with queue:
        first, second = await speak.enqueue(), await speak_def.enqueue()
        async with queue.worker():
            await first.result(timeout=RESULT_TIMEOUT)
            await second.result(timeout=RESULT_TIMEOUT)

    def fields(message: str) -> tuple[object, ...]:
        (record,) = [r for r in collected.records if r.getMessage().startswith(message)]
        return tuple(getattr(record, f) for f in ("job_id", "job_task", "job_queue", "job_attempt"))

    assert fields("outside") == (None, None, None, None)
    assert fields("async says 1") == (first.id, "speak", "mail", 1)
    assert fields("async says 2") == (first.id, "speak", "mail", 2)
    assert fields("thread says") == (second.id, "speak_def", "mail", 1)
    assert fields(f"job {first.id} (speak) attempt 1/2 failed") == (first.id, "speak", "mail", 1)


def test_the_formatters_write_the_job_fields_as_text_and_as_json() -> None:
    """JobFormatter adds job=... task=... queue=... attempt=... inside a job and nothing outside;
    JsonFormatter writes one object with the same fields."""
    inside = logging.LogRecord("app", logging.WARNING, __file__, 1, "hello %s", ("you",), None)
    inside.job_id, inside.job_task, inside.job_queue, inside.job_attempt = "j1", "t", "q", 2
    outside = logging.LogRecord("app", logging.INFO, __file__, 1, "plain", (), None)
    text = JobFormatter("%(levelname)s %(job)s%(message)s")
    assert text.format(inside) == "WARNING job=j1 task=t queue=q attempt=2 hello you"
    assert text.format(outside) == "INFO plain"
    line = json.loads(JsonFormatter().format(inside))
    assert {k: line[k] for k in ("level", "logger", "message", "job_id", "task", "queue", "attempt")} == {
        "level": "WARNING", "logger": "app", "message": "hello you", "job_id": "j1", "task": "t",
        "queue": "q", "attempt": 2,
    }
    assert "job_id" not in json.loads(JsonFormatter().format(outside))

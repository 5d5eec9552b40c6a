"""Job-aware logging: every record emitted while a job runs knows the job.

The worker sets :data:`current_job` (a ``contextvars`` variable) at the start of each attempt, in
the attempt's own asyncio task, and copies it into the thread of a ``def`` task; a ``cpu=True``
task's records are sent to its worker and logged there, inside the attempt. So any
``logging`` call made while a job runs (the task's own, a library's, the worker's) can be told
apart, with :class:`JobContextFilter` on a handler:

```python
import logging
from conveyor.logs import JobContextFilter, JobFormatter, JsonFormatter

handler = logging.StreamHandler()
handler.addFilter(JobContextFilter())      # record.job_id, .job_task, .job_queue, .job_attempt
handler.setFormatter(JobFormatter())       # "... job=<id> task=<name> queue=<q> attempt=<n> message"
# or JsonFormatter(): one JSON object per line
logging.getLogger().addHandler(handler)
```

``conveyor worker`` sets this up itself (``--log-format text|json``). Outside a job the four
attributes are None and the formatters leave them out.
"""

from __future__ import annotations

import json
import logging
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from conveyor.context import Context

__all__ = ["JOB_FIELDS", "JobContextFilter", "JobFormatter", "JsonFormatter", "current_job"]

#: the attempt running in this asyncio task or thread, if any
current_job: ContextVar[Context | None] = ContextVar("conveyor_job", default=None)

#: the attributes :class:`JobContextFilter` puts on each record
JOB_FIELDS = ("job_id", "job_task", "job_queue", "job_attempt")

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s [%(process)d] %(job)s%(message)s"


def _stamp(record: logging.LogRecord) -> None:
    """Give ``record`` the job fields, from the running job (a record from a cpu process has them)."""
    ctx = current_job.get()
    if ctx is not None:
        record.job_id, record.job_task = ctx.job_id, ctx.task
        record.job_queue, record.job_attempt = ctx.queue, ctx.attempt
    elif not hasattr(record, "job_id"):
        record.job_id = record.job_task = record.job_queue = record.job_attempt = None


class JobContextFilter(logging.Filter):
    """Adds ``job_id``, ``job_task``, ``job_queue`` and ``job_attempt`` to every record (None
    outside a job). Attach it to a handler: it lets every record through."""

    def filter(self, record: logging.LogRecord) -> bool:
        _stamp(record)
        return True


def _job_fields(record: logging.LogRecord) -> tuple[Any, Any, Any, Any]:
    return tuple(getattr(record, name, None) for name in JOB_FIELDS)  # type: ignore[return-value]


def _job_text(record: logging.LogRecord) -> str:
    job_id, task, queue, attempt = _job_fields(record)
    if job_id is None:
        return ""
    return f"job={job_id} task={task} queue={queue} attempt={attempt} "


class JobFormatter(logging.Formatter):
    """Plain text; ``%(job)s`` is ``job=<id> task=<name> queue=<q> attempt=<n> `` inside a job,
    empty outside one."""

    def __init__(self, fmt: str = TEXT_FORMAT, datefmt: str | None = None) -> None:
        super().__init__(fmt, datefmt)

    def format(self, record: logging.LogRecord) -> str:
        _stamp(record)
        record.job = _job_text(record)
        return super().format(record)


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time (UTC, ISO 8601), level, logger, message, process, and
    job_id, task, queue, attempt inside a job; ``exception`` holds a traceback when there is one."""

    def format(self, record: logging.LogRecord) -> str:
        _stamp(record)
        out: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="microseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            "process": record.process,
        }
        job_id, task, queue, attempt = _job_fields(record)
        if job_id is not None:
            out.update(job_id=job_id, task=task, queue=queue, attempt=attempt)
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        elif record.exc_text:
            out["exception"] = record.exc_text
        if record.stack_info:
            out["stack"] = self.formatStack(record.stack_info)
        return json.dumps(out, default=str, ensure_ascii=False)

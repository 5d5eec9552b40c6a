"""A registered task, its per-call options, and enqueueing."""

from __future__ import annotations

import functools
import inspect
import math
import string
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, Generic, ParamSpec, TypeVar

from conveyor.context import Context
from conveyor.errors import ArgumentError, ConfigError, OptionError
from conveyor.middleware import Middleware
from conveyor.model import EMPTY_META, JobRecord, new_id, utcnow
from conveyor.retry import MAX_SECONDS, Retry, seconds
from conveyor.serde import TaskSignature, check_key, check_meta

if TYPE_CHECKING:
    from conveyor.job import Job
    from conveyor.queue import Queue

__all__ = [
    "MAX_PRIORITY", "MIN_PRIORITY", "Options", "Prepared", "Task", "TaskCall", "check_optional",
    "check_priority",
]

P = ParamSpec("P")
R = TypeVar("R")

#: priorities are 32-bit signed ints: every backend stores them exactly (Redis as a zset score,
#: a double, which is exact to 2**53)
MIN_PRIORITY, MAX_PRIORITY = -(2**31), 2**31 - 1
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def check_priority(value: object) -> int:
    """A priority: an int (not a bool) from :data:`MIN_PRIORITY` to :data:`MAX_PRIORITY`."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise OptionError(f"priority must be an int, got {type(value).__name__} {value!r}")
    if not MIN_PRIORITY <= value <= MAX_PRIORITY:
        raise OptionError(f"priority must be between -2**31 and 2**31 - 1, got {value!r}")
    return value


def check_optional(value: object, kind: type, what: str) -> None:
    """Raise :class:`OptionError` unless ``value`` is None or a ``kind`` (a bool is no int)."""
    if value is not None and (not isinstance(value, kind) or (kind is not bool and isinstance(value, bool))):
        raise OptionError(f"{what} must be a {kind.__name__} or None, got {type(value).__name__} {value!r}")


@dataclass(frozen=True, slots=True)
class Options:
    """Per-call job options (``task.options(...)``); None means "the task's default"."""

    delay: float | None = None
    at: datetime | None = None
    priority: int | None = None
    key: str | None = None
    unique: str | None = None
    supersede: bool | None = None
    timeout: float | None = None
    retries: Retry | None = None
    meta: Mapping[str, str] | None = None
    #: the application's connection whose open transaction the job is written in (PostgreSQL)
    connection: object | None = field(default=None, compare=False)


@dataclass(frozen=True, slots=True)
class Prepared(Generic[R]):
    """A validated job, ready for ``queue.enqueue_many``."""

    task: Task[Any, R]
    record: JobRecord


def _key_fields(template: str) -> list[str]:
    try:
        return [field for _, field, _, _ in string.Formatter().parse(template) if field is not None]
    except ValueError as exc:
        raise OptionError(
            f"key {template!r} is not a valid template ({exc}): write a literal brace as {{{{ or }}}}"
        ) from None


class Task(Generic[P, R]):
    """A function registered on a queue. Calling it runs it here and now; ``enqueue`` defers it."""

    def __init__(
        self, queue: Queue, fn: Callable[P, Any], *, name: str, retries: Retry | None,
        timeout: float | None, cpu: bool, key: str | None, priority: int, supersede: bool,
    ) -> None:
        self.queue = queue
        self.fn = fn
        self.name = name
        self.retry = retries or Retry()
        self.timeout = timeout
        self.cpu = cpu
        self.key = key
        self.priority = priority
        self.supersede = supersede
        self.is_async = inspect.iscoroutinefunction(fn)
        #: middlewares of this task alone, innermost of all (FastAPI's Depends resolution)
        self.inner_middleware: tuple[Middleware, ...] = ()
        if cpu and self.is_async:
            raise ConfigError(f"task {name!r}: cpu=True needs a plain `def` (it runs in a process)")
        qualname = str(getattr(fn, "__qualname__", ""))
        if cpu and ("<locals>" in qualname or "<lambda>" in qualname):
            raise ConfigError(
                f"task {name!r}: a cpu=True task runs in another process, which finds the function "
                f"by importing {getattr(fn, '__module__', '?')}.{qualname}; a function defined "
                "inside another function (or a lambda) cannot be found that way: define it at "
                "module level"
            )
        self.signature = TaskSignature(fn, context_type=Context, name=name)
        if key is not None:
            self._check_key(key)
        functools.update_wrapper(self, fn)

    def __repr__(self) -> str:
        return f"<Task {self.name!r} queue={self.queue.name!r}>"

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> Any:
        """Run the function directly, as if it were not a task."""
        return self.fn(*args, **kwargs)

    def _check_key(self, template: str) -> None:
        names = set(self.signature.signature.parameters)
        for part in _key_fields(template):
            root = part.split(".")[0].split("[")[0]
            if not root or root not in names:
                raise ConfigError(
                    f"task {self.name!r}: key template {template!r} names {part!r}, "
                    f"which is not one of its parameters {sorted(names)}"
                )

    def options(
        self, *, delay: float | timedelta | None = None, at: datetime | None = None,
        priority: int | None = None, key: str | None = None, unique: str | None = None,
        supersede: bool | None = None, timeout: float | timedelta | None = None,
        retries: Retry | int | None = None, meta: Mapping[str, str] | None = None,
        connection: object | None = None,
    ) -> TaskCall[P, R]:
        """The same task with options for the next enqueue (delay, priority, key, unique, ...).

        ``meta`` is a small dict of str carried with the job (``ctx.meta`` in the task; see
        docs/observability.md); a wrong type or one past its limits is a :class:`BadMeta`.
        ``connection=`` (PostgreSQL queues) writes the job inside the open transaction of the
        application's connection (a SQLAlchemy ``AsyncSession``/``AsyncConnection``, asyncpg or
        psycopg 3): it exists, and workers are woken, only if that transaction commits.
        """
        if delay is not None and at is not None:
            raise OptionError("give delay= or at=, not both")
        if at is not None:
            _check_at(at)
        if priority is not None:
            check_priority(priority)
        check_optional(key, str, "key")
        check_optional(unique, str, "unique")
        check_optional(supersede, bool, "supersede")
        if retries is not None and not isinstance(retries, Retry | int):
            raise OptionError(f"retries= takes a Retry or an int, got {type(retries).__name__}")
        return TaskCall(self, Options(
            delay=seconds(delay, "delay"), at=at, priority=priority, key=key, unique=unique,
            supersede=supersede, timeout=seconds(timeout, "timeout", positive=True),
            retries=Retry.of(retries), meta=None if meta is None else check_meta(meta),
            connection=connection,
        ))

    def prepare(self, *args: P.args, **kwargs: P.kwargs) -> Prepared[R]:
        """Validate a call and build its job without storing it (see ``queue.enqueue_many``)."""
        return TaskCall(self, Options()).prepare(*args, **kwargs)

    async def enqueue(self, *args: P.args, **kwargs: P.kwargs) -> Job[R]:
        """Store a job that runs this task with these arguments; return its handle.

        Raises an :class:`~conveyor.errors.EnqueueError` (and stores nothing) when the arguments do
        not fit the signature, are not JSON, or are too large.
        """
        return await TaskCall(self, Options()).enqueue(*args, **kwargs)


def _check_at(at: object) -> None:
    if not isinstance(at, datetime):
        raise OptionError(f"at= must be a datetime, got {type(at).__name__} {at!r}")
    if at.tzinfo is None or at.utcoffset() is None:
        raise OptionError("at= must be an aware datetime (e.g. datetime.now(UTC) + ...)")
    try:
        ahead = (at - utcnow()).total_seconds()
        after_epoch = at >= _EPOCH
    except OverflowError:  # a tzinfo that moves it past year 1 or 9999
        ahead, after_epoch = math.inf, False
    if not after_epoch or ahead > MAX_SECONDS:
        raise OptionError(
            f"at= must be between 1970-01-01 and 100 years from now (UTC), got {at.isoformat()}"
        )


class TaskCall(Generic[P, R]):
    """A task with options fixed for the next enqueue."""

    __slots__ = ("opts", "task")

    def __init__(self, task: Task[P, R], opts: Options) -> None:
        self.task = task
        self.opts = opts

    def options(self, **changes: Any) -> TaskCall[P, R]:
        """More options on top of these."""
        merged = self.task.options(**changes)
        fields = {
            f: getattr(merged.opts, f) for f in Options.__slots__ if getattr(merged.opts, f) is not None
        }
        if self.opts.meta and merged.opts.meta is not None:  # meta adds up: later keys win
            fields["meta"] = check_meta({**self.opts.meta, **merged.opts.meta})
        return TaskCall(self.task, replace(self.opts, **fields))

    def prepare(self, *args: P.args, **kwargs: P.kwargs) -> Prepared[R]:
        """Validate the call and build its job record."""
        if self.opts.connection is not None:
            raise OptionError(
                "connection= belongs to the call that writes: for a batch, pass it to "
                "queue.enqueue_many([...], connection=...)"
            )
        return self._prepare(*args, **kwargs)

    def _prepare(self, *args: P.args, **kwargs: P.kwargs) -> Prepared[R]:
        task, opts = self.task, self.opts
        bound = task.signature.bind(args, kwargs)
        enc_args, enc_kwargs = task.signature.encode(bound, task.queue.settings.max_payload)
        key = opts.key if opts.key is not None else task.key
        if key is not None and (opts.key is None or _key_fields(key)):
            if opts.key is not None:
                task._check_key(key)
            try:
                key = key.format(**task.signature.arguments(bound))
            except (KeyError, IndexError, AttributeError, ValueError, TypeError) as exc:
                raise ArgumentError(f"{task.name}(): cannot build key {key!r}: {exc}") from None
        if key is not None:
            check_key(key, "key")
        if opts.unique is not None:
            check_key(opts.unique, "unique")
        now = utcnow()
        scheduled = opts.at.astimezone(UTC) if opts.at is not None else None
        if opts.delay:
            scheduled = now + timedelta(seconds=opts.delay)
        retry = opts.retries
        record = JobRecord(
            id=new_id(), task=task.name, queue=task.queue.name, args=enc_args, kwargs=enc_kwargs,
            priority=opts.priority if opts.priority is not None else task.priority,
            key=key, unique=opts.unique,
            max_attempts=(retry or task.retry).attempts,
            timeout=opts.timeout if opts.timeout is not None else task.timeout,
            enqueued_at=now, scheduled_for=scheduled,
            retry=retry.to_dict() if retry is not None else None,
            supersede=bool(opts.supersede if opts.supersede is not None else task.supersede),
            meta=opts.meta or EMPTY_META,
        )
        return Prepared(task, record)

    async def enqueue(self, *args: P.args, **kwargs: P.kwargs) -> Job[R]:
        """Store the job; return its handle."""
        prepared = self._prepare(*args, **kwargs)
        (job,) = await self.task.queue.enqueue_many([prepared], connection=self.opts.connection)
        return job

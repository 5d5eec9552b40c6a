"""Every bad option raises a typed conveyor error (never TypeError, ValueError or OverflowError)."""

from __future__ import annotations

import math
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from conveyor import Queue, Retry
from conveyor.errors import (
    ArgumentError,
    BadKey,
    ConfigError,
    ConveyorError,
    EnqueueError,
    NotSerializable,
    OptionError,
)
from conveyor.settings import Settings


def _queue() -> Queue:
    queue = Queue("memory://", name="opts")

    @queue.task(name="t", key="user:{user}")
    async def t(user: Any, n: int = 0) -> None: ...

    @queue.task(name="plain")
    async def plain(n: int = 0) -> None: ...

    return queue


def _opts(**kw: Any) -> Callable[[Queue], Any]:
    return lambda q: q.tasks["plain"].options(**kw)


def _retry(**kw: Any) -> Callable[[Queue], Any]:
    return lambda q: Retry(**kw)


def _settings(**kw: Any) -> Callable[[Queue], Any]:
    return lambda q: Settings(**kw)


def _worker(**kw: Any) -> Callable[[Queue], Any]:
    return lambda q: q.worker(**kw)


def _register(**kw: Any) -> Callable[[Queue], Any]:
    def run(q: Queue) -> Any:
        async def fn() -> None: ...

        return q.task(**kw)(fn)

    return run


def _prepare(key: Any = None, unique: Any = None, user: Any = 1) -> Callable[[Queue], Any]:
    def run(q: Queue) -> Any:
        if key is None and unique is None:
            return q.tasks["t"].prepare(user)
        call = q.tasks["t"].options(key=key, unique=unique)
        return call.prepare(user)

    return run


AWARE_MAX = datetime.max.replace(tzinfo=UTC)

CASES: dict[str, tuple[Callable[[Queue], Any], type[ConveyorError]]] = {
    # per-call options
    "priority 2**31": (_opts(priority=2**31), OptionError),
    "priority -2**31-1": (_opts(priority=-(2**31) - 1), OptionError),
    "priority 2**70": (_opts(priority=2**70), OptionError),
    "priority float": (_opts(priority=1.5), OptionError),
    "priority str": (_opts(priority="1"), OptionError),
    "priority bool": (_opts(priority=True), OptionError),
    "delay huge": (_opts(delay=1e300), OptionError),
    "delay huge timedelta": (_opts(delay=timedelta(days=999_999_999)), OptionError),
    "delay negative": (_opts(delay=-1), OptionError),
    "delay nan": (_opts(delay=math.nan), OptionError),
    "delay inf": (_opts(delay=math.inf), OptionError),
    "delay str": (_opts(delay="5"), OptionError),
    "delay bool": (_opts(delay=True), OptionError),
    "delay int past float": (_opts(delay=10**400), OptionError),
    "delay and at": (_opts(delay=1, at=datetime.now(UTC)), OptionError),
    "at naive": (_opts(at=datetime(2030, 1, 1)), OptionError),
    "at str": (_opts(at="2030-01-01T00:00:00Z"), OptionError),
    "at number": (_opts(at=1_900_000_000), OptionError),
    "at year 9999": (_opts(at=AWARE_MAX), OptionError),
    "at year 1": (_opts(at=datetime.min.replace(tzinfo=UTC)), OptionError),
    "timeout 0": (_opts(timeout=0), OptionError),
    "timeout negative": (_opts(timeout=-5), OptionError),
    "timeout inf": (_opts(timeout=math.inf), OptionError),
    "timeout nan": (_opts(timeout=math.nan), OptionError),
    "timeout huge": (_opts(timeout=1e300), OptionError),
    "timeout str": (_opts(timeout="3"), OptionError),
    "timeout bool": (_opts(timeout=True), OptionError),
    "key int": (_opts(key=5), OptionError),
    "key bytes": (_opts(key=b"k"), OptionError),
    "unique int": (_opts(unique=5), OptionError),
    "unique list": (_opts(unique=["a"]), OptionError),
    "supersede int": (_opts(supersede=1), OptionError),
    "supersede str": (_opts(supersede="yes"), OptionError),
    "retries str": (_opts(retries="3"), OptionError),
    "retries float": (_opts(retries=3.5), OptionError),
    "retries bool": (_opts(retries=True), OptionError),
    "retries negative": (_opts(retries=-1), OptionError),
    "retries huge": (_opts(retries=10**7), OptionError),
    "retries dict": (_opts(retries={"attempts": 3}), OptionError),
    # Retry policy
    "Retry attempts str": (_retry(attempts="3"), OptionError),
    "Retry attempts 0": (_retry(attempts=0), OptionError),
    "Retry attempts float": (_retry(attempts=1.5), OptionError),
    "Retry attempts bool": (_retry(attempts=True), OptionError),
    "Retry attempts huge": (_retry(attempts=10**9), OptionError),
    "Retry backoff nan": (_retry(backoff=math.nan), OptionError),
    "Retry backoff inf": (_retry(backoff=math.inf), OptionError),
    "Retry backoff str": (_retry(backoff="1"), OptionError),
    "Retry backoff negative": (_retry(backoff=-1), OptionError),
    "Retry factor below 1": (_retry(factor=0.5), OptionError),
    "Retry factor nan": (_retry(factor=math.nan), OptionError),
    "Retry factor inf": (_retry(factor=math.inf), OptionError),
    "Retry max_delay negative": (_retry(max_delay=-1), OptionError),
    "Retry max_delay inf": (_retry(max_delay=math.inf), OptionError),
    "Retry jitter str": (_retry(jitter="yes"), OptionError),
    # Settings
    "Settings lease str": (_settings(lease="30"), OptionError),
    "Settings lease nan": (_settings(lease=math.nan), OptionError),
    "Settings lease inf": (_settings(lease=math.inf), OptionError),
    "Settings lease under 1": (_settings(lease=0.5), OptionError),
    "Settings grace inf": (_settings(grace=math.inf), OptionError),
    "Settings grace 0": (_settings(grace=0), OptionError),
    "Settings cancel_poll str": (_settings(cancel_poll="0.2"), OptionError),
    "Settings max_payload float": (_settings(max_payload=1.5), OptionError),
    "Settings max_payload bool": (_settings(max_payload=True), OptionError),
    "Settings max_payload 0": (_settings(max_payload=0), OptionError),
    "Settings max_lost_leases str": (_settings(max_lost_leases="5"), OptionError),
    "Settings max_lost_leases 0": (_settings(max_lost_leases=0), OptionError),
    "Settings retention negative": (_settings(retention=-1), OptionError),
    "Settings retention str": (_settings(retention="1"), OptionError),
    "Settings retention nan": (_settings(retention=math.nan), OptionError),
    "Settings purge_interval 0": (_settings(purge_interval=0), OptionError),
    # worker
    "worker concurrency str": (_worker(concurrency="10"), OptionError),
    "worker concurrency 0": (_worker(concurrency=0), OptionError),
    "worker concurrency negative": (_worker(concurrency=-1), OptionError),
    "worker concurrency float": (_worker(concurrency=1.5), OptionError),
    "worker concurrency bool": (_worker(concurrency=True), OptionError),
    "worker concurrency huge": (_worker(concurrency=10**9), OptionError),
    "worker queues str": (_worker(queues="default"), OptionError),
    "worker queues of ints": (_worker(queues=[1]), OptionError),
    "worker queues empty": (_worker(queues=[]), OptionError),
    "worker cpu_workers 0": (_worker(cpu_workers=0), OptionError),
    "worker grace negative": (_worker(grace=-1), OptionError),
    "worker grace str": (_worker(grace="1"), OptionError),
    "worker lease nan": (_worker(lease=math.nan), OptionError),
    "lifespan concurrency 0": (lambda q: q.lifespan(worker=True, concurrency=0), OptionError),
    # task registration
    "task priority 2**40": (_register(priority=2**40), OptionError),
    "task priority str": (_register(priority="high"), OptionError),
    "task timeout 0": (_register(timeout=0), OptionError),
    "task timeout inf": (_register(timeout=math.inf), OptionError),
    "task retries str": (_register(retries="x"), OptionError),
    "task key int": (_register(key=5), OptionError),
    "task cpu str": (_register(cpu="yes"), OptionError),
    "task supersede int": (_register(supersede=1), OptionError),
    "task name int": (_register(name=5), OptionError),
    "task name empty": (_register(name=""), ConfigError),
    "task name NUL": (_register(name="a\x00b"), ConfigError),
    "task name lone surrogate": (_register(name="a\ud800"), ConfigError),
    "task name too long": (_register(name="x" * 201), ConfigError),
    # queue
    "queue name int": (lambda q: Queue("memory://", name=5), ConfigError),  # type: ignore[arg-type]
    "queue name empty": (lambda q: Queue("memory://", name=""), ConfigError),
    "queue name lone surrogate": (lambda q: Queue("memory://", name="\udcff"), ConfigError),
    "queue name too long": (lambda q: Queue("memory://", name="q" * 201), ConfigError),
    "queue settings dict": (lambda q: Queue("memory://", settings={"lease": 3}), OptionError),  # type: ignore[arg-type]
    # router
    "router heartbeat 0": (lambda q: q.router(heartbeat=0, public=True), OptionError),
    "router heartbeat str": (lambda q: q.router(heartbeat="1", public=True), OptionError),
    "router heartbeat nan": (lambda q: q.router(heartbeat=math.nan, public=True), OptionError),
    "router public str": (lambda q: q.router(public="yes"), OptionError),
    # values checked at enqueue
    "key empty": (_prepare(key=""), BadKey),
    "key too long": (_prepare(key="k" * 1025), BadKey),
    "key NUL": (_prepare(key="a\x00"), BadKey),
    "key lone surrogate": (_prepare(key="\ud800"), BadKey),
    "key from a template too long": (_prepare(user="u" * 2000), BadKey),
    "argument with a lone surrogate": (_prepare(user="\ud83d"), NotSerializable),
    "key template with a bad format spec": (_prepare(key="{user:d}", user="x"), ArgumentError),
    "unique empty": (_prepare(unique=""), BadKey),
    "unique too long": (_prepare(unique="u" * 1025), BadKey),
    "unique NUL": (_prepare(unique="\x00"), BadKey),
    "unique lone surrogate": (_prepare(unique="\udfff"), BadKey),
}


@pytest.mark.parametrize(("make", "expected"), list(CASES.values()), ids=list(CASES))
def test_bad_option_raises_a_typed_error(
    make: Callable[[Queue], Any], expected: type[ConveyorError]
) -> None:
    """Each bad option raises its conveyor error class, with a message naming the option."""
    queue = _queue()
    with pytest.raises(ConveyorError) as caught:
        make(queue)
    assert isinstance(caught.value, expected), repr(caught.value)
    assert isinstance(caught.value, ConfigError | EnqueueError)
    assert caught.value.message


GOOD: dict[str, Callable[[Queue], Any]] = {
    "priority bounds": lambda q: (_opts(priority=2**31 - 1)(q), _opts(priority=-(2**31))(q)),
    "delay 0 and timedelta": lambda q: (_opts(delay=0)(q), _opts(delay=timedelta(days=365))(q)),
    "at in the past": _opts(at=datetime(2000, 1, 1, tzinfo=UTC)),
    "retries 0 and a Retry": lambda q: (_opts(retries=0)(q), _opts(retries=Retry(attempts=3))(q)),
    "Retry with ints": _retry(attempts=3, backoff=1, factor=2, max_delay=60),
    "Settings with ints": _settings(lease=30, grace=1, max_lost_leases=None, retention=None),
    "worker": _worker(concurrency=1, queues=["opts", "other"], grace=0),
    "key and unique at the limit": _prepare(key="k" * 1024, unique="u" * 1024),
    "astral key": _prepare(key="match:\U0001f600"),
}


@pytest.mark.parametrize("make", list(GOOD.values()), ids=list(GOOD))
def test_good_options_at_the_edges_are_accepted(make: Callable[[Queue], Any]) -> None:
    """Values at the edge of each range are accepted."""
    make(_queue())


def test_retry_delay_never_overflows() -> None:
    """The backoff after a very late attempt is max_delay, not an OverflowError."""
    policy = Retry(attempts=100_000, backoff=1.5, factor=10.0, max_delay=600.0, jitter=False)
    assert policy.delay(1) == 1.5
    assert policy.delay(99_999) == 600.0


async def test_bad_list_and_lookup_arguments_are_typed() -> None:
    """``list_jobs`` and ``enqueue`` by name refuse arguments of the wrong type with typed errors."""
    from conveyor.errors import UnknownTask

    queue = _queue()
    for kwargs in ({"status": "exploded"}, {"limit": -1}, {"offset": "3"}, {"limit": True}, {"task": 5}):
        with pytest.raises(OptionError):
            await queue.list_jobs(**kwargs)
    with pytest.raises(UnknownTask):
        await queue.enqueue(5)  # type: ignore[arg-type]

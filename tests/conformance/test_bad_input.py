"""Bad input is refused at enqueue, writing nothing; malformed stored jobs fail, workers go on."""

from __future__ import annotations

import math
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Annotated, Any

import pytest
from pydantic import BaseModel, ConfigDict, Strict

from conveyor import Context, Queue
from conveyor.errors import (
    ArgumentError,
    EnqueueError,
    JobFailed,
    LimitExceeded,
    NotSerializable,
    PayloadTooLarge,
)
from conveyor.model import JobRecord, new_id

from .helpers import RESULT_TIMEOUT, assert_nothing_written, total_jobs


class Stamp(BaseModel):
    """A strict model: its datetime comes only as a datetime in Python mode."""

    model_config = ConfigDict(strict=True)
    when: datetime

MiB = 1 << 20


def _register(queue: Queue) -> Any:
    @queue.task(name="store")
    async def store(user_id: int, payload: Any = None, *, note: str = "") -> int:
        return user_id

    return store


WRONG_ARGS: dict[str, Callable[[Any], Any]] = {
    "missing argument": lambda t: t.prepare(),
    "wrong type": lambda t: t.prepare("not a number"),
    "too many positional": lambda t: t.prepare(1, None, "extra"),
    "unknown keyword": lambda t: t.prepare(1, colour="red"),
    "wrong type for keyword": lambda t: t.prepare(1, note=["not", "a", "str"]),
    "same argument twice": lambda t: t.prepare(1, user_id=2),
}


@pytest.mark.parametrize("call", list(WRONG_ARGS.values()), ids=list(WRONG_ARGS))
async def test_wrong_arguments_raise_argument_error_and_write_nothing(
    queue: Queue, call: Callable[[Any], Any]
) -> None:
    """Arguments that do not fit the signature raise ArgumentError; nothing is stored."""
    store = _register(queue)
    with pytest.raises(ArgumentError) as caught:
        call(store)
    assert isinstance(caught.value, EnqueueError)
    assert caught.value.message
    await assert_nothing_written(queue)


async def test_wrong_arguments_to_enqueue_write_nothing(queue: Queue) -> None:
    """``enqueue`` and ``options().enqueue`` refuse bad arguments the same way."""
    store = _register(queue)
    with pytest.raises(ArgumentError):
        await store.enqueue("nope")
    with pytest.raises(ArgumentError):
        await store.options(priority=3, key="k").enqueue()
    await assert_nothing_written(queue)


class Session:
    """Stands for a live object such as a DB session."""


NOT_JSON: dict[str, Any] = {
    "set": {1, 2, 3},
    "frozenset": frozenset({"a"}),
    "bytes": b"\x00\x01",
    "bytearray": bytearray(b"abc"),
    "nan": math.nan,
    "infinity": math.inf,
    "minus infinity": -math.inf,
    "object": object(),
    "db session": Session(),
    "nested set": {"tags": {"a", "b"}},
    "nested nan": [1.0, [2.0, math.nan]],
    "non-str key": {1: "one"},
    "function": print,
}


def _nested(depth: int) -> Any:
    value: Any = 0
    for _ in range(depth):
        value = [value]
    return value


def _cycle() -> Any:
    loop: list[Any] = []
    loop.append(loop)
    return loop


PAST_LIMITS: dict[str, tuple[Any, type[NotSerializable]]] = {
    "int of 5000 digits (json.dumps raises ValueError)": (10**5000, LimitExceeded),
    "int past 2**63 - 1": (2**63, LimitExceeded),
    "int below -2**63": (-(2**63) - 1, LimitExceeded),
    "nested 101 deep": (_nested(101), LimitExceeded),
    "nested 10,000 deep": (_nested(10_000), LimitExceeded),
    "a list that contains itself": (_cycle(), LimitExceeded),
    "lone surrogate": ("ab\ud800", NotSerializable),
    "lone surrogate in a dict key": ({"\udc00": 1}, NotSerializable),
    "lone surrogate deep inside": ({"a": [1, {"b": "\udfff"}]}, NotSerializable),
}


@pytest.mark.parametrize(("value", "error"), list(PAST_LIMITS.values()), ids=list(PAST_LIMITS))
async def test_values_past_the_limits_are_refused_with_a_typed_error(
    queue: Queue, value: Any, error: type[NotSerializable]
) -> None:
    """Values JSON cannot carry exactly are refused at enqueue with their typed error; nothing is
    stored. The same holds for a parameter annotated with a type (pydantic path)."""
    store = _register(queue)

    @queue.task(name="typed")
    async def typed(value: list[Any] | dict[str, Any] | str | int) -> None: ...

    for task in (store, typed):
        args = (1, value) if task is store else (value,)
        with pytest.raises(error) as caught:
            await task.enqueue(*args)
        assert caught.value.message
    await assert_nothing_written(queue)


async def test_values_at_the_limits_are_accepted(queue: Queue) -> None:
    """The edges themselves are fine: 2**63 - 1, -2**63, 100 levels, astral characters, NUL."""
    store = _register(queue)
    for value in (2**63 - 1, -(2**63), _nested(99), "\U0001f600\x00", {"\U0010ffff": -0.0}):
        job = await store.enqueue(1, value)
        assert (await job.info()).args[1] == value


@pytest.mark.parametrize("value", list(NOT_JSON.values()), ids=list(NOT_JSON))
async def test_non_json_values_raise_not_serializable_and_write_nothing(
    queue: Queue, value: Any
) -> None:
    """A value that is not plain JSON raises NotSerializable at enqueue; nothing is stored."""
    store = _register(queue)
    with pytest.raises(NotSerializable) as caught:
        await store.enqueue(1, value)
    assert isinstance(caught.value, EnqueueError)
    await assert_nothing_written(queue)


async def test_nan_for_a_float_parameter_is_not_serializable(queue: Queue) -> None:
    """NaN is refused even where the parameter is annotated ``float``."""

    @queue.task
    async def measure(value: float) -> None: ...

    with pytest.raises(NotSerializable):
        await measure.enqueue(math.nan)
    with pytest.raises(NotSerializable):
        await measure.enqueue(math.inf)
    await assert_nothing_written(queue)


async def test_payload_over_one_mebibyte_is_too_large_and_writes_nothing(queue: Queue) -> None:
    """Arguments encoding to more than 1 MiB raise PayloadTooLarge; nothing is stored."""
    store = _register(queue)
    with pytest.raises(PayloadTooLarge) as caught:
        await store.enqueue(1, "x" * (MiB + 1))
    assert isinstance(caught.value, EnqueueError)
    with pytest.raises(PayloadTooLarge):
        await store.enqueue(1, ["y" * 1000] * 1100)
    await assert_nothing_written(queue)


async def test_payload_just_under_the_cap_is_accepted(queue: Queue) -> None:
    """A payload comfortably under 1 MiB is stored and runs."""
    store = _register(queue)
    job = await store.enqueue(7, "z" * (MiB - 4096))
    assert await total_jobs(queue) == 1
    async with queue.worker(concurrency=1):
        assert await job.result(timeout=RESULT_TIMEOUT) == 7


async def test_bad_job_in_a_batch_writes_nothing_at_all(queue: Queue) -> None:
    """``enqueue_many`` is all or nothing: one bad call means no job of the batch is stored."""
    store = _register(queue)
    with pytest.raises(EnqueueError):
        await queue.enqueue_many([store.prepare(1), store.prepare(2, {3}), store.prepare(4)])
    await assert_nothing_written(queue)


# -- malformed stored jobs: errors recorded on the job, the worker keeps going --------------------


async def _insert(queue: Queue, **fields: Any) -> str:
    """Store a raw record behind the API's back, as a foreign producer or an old version might."""
    await queue.open()
    record = JobRecord(id=new_id(), queue=queue.name, **fields)
    (stored,) = await queue.backend.enqueue([record])
    return stored.id


async def _fails_cleanly(queue: Queue, job_id: str) -> dict[str, Any]:
    with pytest.raises(JobFailed) as caught:
        await queue.job(job_id).result(timeout=RESULT_TIMEOUT)
    assert caught.value.status == "failed"
    info = await queue.job(job_id).info()
    assert info.status == "failed"
    assert info.error is not None
    assert info.error["type"] and info.error["message"]
    return dict(info.error)


async def test_unknown_task_name_fails_the_job_and_the_worker_goes_on(queue: Queue) -> None:
    """A stored job naming no registered task ends failed with a clear error; later jobs run."""
    store = _register(queue)
    bad = await _insert(queue, task="no.such.task", args=[1])
    async with queue.worker(concurrency=1):
        error = await _fails_cleanly(queue, bad)
        assert "no.such.task" in error["message"]
        good = await store.enqueue(5)
        assert await good.result(timeout=RESULT_TIMEOUT) == 5


async def test_stored_arguments_that_do_not_validate_fail_the_job(queue: Queue) -> None:
    """Stored arguments that do not fit the task end the job failed; later jobs still run."""
    store = _register(queue)
    wrong_type = await _insert(queue, task="store", args=["not a number"])
    missing = await _insert(queue, task="store", args=[], kwargs={})
    unknown_kw = await _insert(queue, task="store", args=[1], kwargs={"colour": "red"})
    async with queue.worker(concurrency=1):
        for job_id in (wrong_type, missing, unknown_kw):
            error = await _fails_cleanly(queue, job_id)
            assert "store" in error["message"]
        good = await store.enqueue(6)
        assert await good.result(timeout=RESULT_TIMEOUT) == 6


async def test_structurally_malformed_payload_fails_the_job(queue: Queue) -> None:
    """Stored args/kwargs of the wrong shape end the job failed; the worker keeps processing."""
    store = _register(queue)
    bad_args = await _insert(queue, task="store", args={"user_id": 1})
    bad_kwargs = await _insert(queue, task="store", args=[1], kwargs=[["note", "x"]])
    async with queue.worker(concurrency=2):
        await _fails_cleanly(queue, bad_args)
        await _fails_cleanly(queue, bad_kwargs)
        good = await store.enqueue(8)
        assert await good.result(timeout=RESULT_TIMEOUT) == 8


async def test_unserializable_return_value_fails_the_job(queue: Queue) -> None:
    """A task returning something that is not JSON ends failed with NotSerializable."""

    @queue.task
    async def bad_result() -> Any:
        return {1, 2}

    @queue.task
    async def fine() -> int:
        return 1

    job = await bad_result.enqueue()
    async with queue.worker(concurrency=1):
        with pytest.raises(JobFailed) as caught:
            await job.result(timeout=RESULT_TIMEOUT)
        assert "NotSerializable" in caught.value.error["type"]
        assert await (await fine.enqueue()).result(timeout=RESULT_TIMEOUT) == 1


async def test_a_kwargs_key_named_like_an_injected_parameter_is_refused(queue: Queue) -> None:
    """``enqueue(ctx=5)`` on a task with ``ctx: Context`` and ``**extra`` is refused at enqueue."""

    @queue.task
    async def kw(ctx: Context, **extra: int) -> None: ...

    with pytest.raises(ArgumentError, match="ctx"):
        await kw.enqueue(ctx=5)  # type: ignore[call-arg]
    await assert_nothing_written(queue)


async def test_strict_types_accepted_at_enqueue_are_rebuilt_in_the_worker(queue: Queue) -> None:
    """Strict pydantic types (a tuple, a UUID, a datetime) pass enqueue and reach the task intact."""
    @queue.task
    async def strict(
        pair: Annotated[tuple[int, int], Strict()], ident: Annotated[uuid.UUID, Strict()], stamp: Stamp
    ) -> str:
        return f"{pair} {ident} {stamp.when.isoformat()}"

    ident, when = uuid.uuid4(), datetime(2026, 12, 2, 5, 0, tzinfo=UTC)
    job = await strict.enqueue((1, 2), ident, Stamp(when=when))
    async with queue.worker(concurrency=1):
        assert await job.result(timeout=RESULT_TIMEOUT) == f"(1, 2) {ident} {when.isoformat()}"

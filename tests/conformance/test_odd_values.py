"""Odd values, found by a property test: each is refused at enqueue with a typed error, or it
round-trips exactly through enqueue → get → list → the router's JSON, on every backend.

The oracle (:func:`fits`) restates the documented limits (docs/semantics.md, "Limits")
independently of the code under test, so a value inside them must be accepted, and one outside
must be refused with the error the docs name.
"""

from __future__ import annotations

import contextlib
import math
import string
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import JsonValue

from conveyor import Queue
from conveyor.backends.base import Ack
from conveyor.errors import (
    ArgumentError,
    BadKey,
    ConfigError,
    EnqueueError,
    LimitExceeded,
    NotSerializable,
    PayloadTooLarge,
)
from conveyor.serde import TaskSignature

MAX_DEPTH = 100
INT64 = (-(2**63), 2**63 - 1)
MAX_KEY, MAX_NAME = 1024, 200
MAX_PAYLOAD = 1 << 20

pytestmark = pytest.mark.timeout(240)

PROFILE = settings(
    max_examples=60, deadline=None, derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                           HealthCheck.data_too_large, HealthCheck.large_base_example],
)

# -- values -------------------------------------------------------------------------------------

ODD_CHARS = ["\x00", "\ud800", "\udfff", "\U0001f600", "\U0010ffff", "\ufeff", "\u2028", "é", '"', "\\"]
text = st.one_of(
    st.text(st.characters(exclude_categories=()), max_size=12),  # surrogates included
    st.lists(st.sampled_from(ODD_CHARS), max_size=4).map("".join),
    st.sampled_from(["", "__proto__", "constructor", "null", "0", " ", "a" * 300]),
)
ints = st.one_of(
    st.integers(),
    st.sampled_from([0, 2**53 + 1, *INT64, INT64[0] - 1, INT64[1] + 1]),
    # past 4,300 digits even repr() fails: built, so hypothesis never prints the strategy's ints
    st.sampled_from([4299, 4300, 5000]).map(lambda digits: -(10**digits)),
)
floats = st.one_of(
    st.floats(allow_nan=False, allow_infinity=False),
    st.sampled_from([-0.0, 1e308, -1e308, 5e-324, 2.2250738585072014e-308, 1.7976931348623157e308,
                     math.nan, math.inf, -math.inf]),
)
leaves = st.one_of(st.none(), st.booleans(), ints, floats, text)
nested = st.recursive(
    leaves, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(text, inner, max_size=3),
    max_leaves=12,
)


def _deep(depth: int, kind: str) -> Any:
    value: Any = 1
    for _ in range(depth):
        value = [value] if kind == "list" else {"k": value}
    return value


deep = st.builds(_deep, st.sampled_from([99, 100, 101, 200, 1000, 10_000]), st.sampled_from(["list", "dict"]))
giant = st.builds(lambda n, c: c * n, st.sampled_from([0, MAX_PAYLOAD - 200, MAX_PAYLOAD + 1]),
                  st.sampled_from(["x", "\U0001f600"]))
values = st.one_of(nested, deep, giant)


def _depth_ok(value: Any, depth: int = 0) -> bool:
    if isinstance(value, list | dict):
        if depth >= MAX_DEPTH:
            return False
        items = value.values() if isinstance(value, dict) else value
        return all(_depth_ok(v, depth + 1) for v in items)
    return True


def _leaf_ok(item: Any) -> bool:
    if isinstance(item, float):
        return math.isfinite(item)
    if isinstance(item, int) and not isinstance(item, bool):
        return INT64[0] <= item <= INT64[1]
    return True


def _leaves_ok(value: Any) -> bool:
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            if not all(_text_ok(k) for k in item):
                return False
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
        elif isinstance(item, str):
            if not _text_ok(item):
                return False
        elif not _leaf_ok(item):
            return False
    return True


def _text_ok(s: str) -> bool:
    return not any(0xD800 <= ord(c) <= 0xDFFF for c in s)


def fits(value: Any) -> bool:
    """Inside the documented limits for a JSON value (size aside)."""
    return _nest_depth(value) <= MAX_DEPTH and _leaves_ok(value)


def _nest_depth(value: Any) -> int:
    depth, level = 0, [value]
    while level and depth <= MAX_DEPTH + 1:
        containers = [v for v in level if isinstance(v, list | dict)]
        if not containers:
            break
        depth += 1
        level = [x for c in containers for x in (c.values() if isinstance(c, dict) else c)]
    return depth


def same(a: Any, b: Any) -> bool:
    """Equal, and of the same JSON type all the way down (1 is not 1.0 or True; -0.0 is not 0.0)."""
    if type(a) is not type(b):
        return False
    if isinstance(a, float):
        return a == b and math.copysign(1, a) == math.copysign(1, b)
    if isinstance(a, list):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, dict):
        return list(a) == list(b) and all(same(a[k], b[k]) for k in a)
    return bool(a == b)


# -- fixtures ----------------------------------------------------------------------------------


@contextlib.asynccontextmanager
async def client_for(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    """An in-process client of ``app``, its lifespan running around it."""
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://app") as c:
            yield c


def _app(queue: Queue) -> FastAPI:
    app = FastAPI(lifespan=queue.lifespan())
    app.include_router(queue.router(public=True), prefix="/jobs")
    return app


@pytest.fixture
async def client(queue: Queue) -> AsyncIterator[httpx.AsyncClient]:
    """An in-process client of the queue's router."""
    async with client_for(_app(queue)) as c:
        yield c


async def _served(queue: Queue, client: httpx.AsyncClient, job_id: str) -> list[dict[str, Any]]:
    """The job as get, list, and the router's two JSON routes give it."""
    record = (await queue.job(job_id).info()).to_dict()
    (listed,) = [r.to_dict() for r in await queue.list_jobs(limit=1)]
    one = (await client.get(f"/jobs/{job_id}")).json()
    page = (await client.get("/jobs", params={"limit": 1})).json()["items"][0]
    assert {record["id"], listed["id"], one["id"], page["id"]} == {job_id}
    return [record, listed, one, page]


# -- the properties ----------------------------------------------------------------------------


@PROFILE
@given(value=values)
async def test_argument_is_refused_or_round_trips(
    queue: Queue, client: httpx.AsyncClient, value: Any
) -> None:
    """An argument is refused with a typed EnqueueError, or served back exactly everywhere."""
    if "plain" not in queue.tasks:

        @queue.task(name="plain")
        async def plain(value: Any) -> None: ...

        @queue.task(name="typed")
        async def typed(value: JsonValue) -> None: ...

    for name in ("plain", "typed"):
        try:
            job = await queue.tasks[name].enqueue(value)
        except EnqueueError as exc:
            assert not fits(value) or isinstance(exc, PayloadTooLarge), (name, exc)
            if not _depth_ok(value):
                assert isinstance(exc, LimitExceeded), exc
            elif not _leaves_ok(value):
                assert isinstance(exc, NotSerializable), exc
            continue
        assert fits(value), f"{name} accepted a value past the limits"
        for served in await _served(queue, client, job.id):
            assert same(served["args"][0], value), (name, served["args"][0])


@PROFILE
@given(value=values)
async def test_result_is_refused_or_round_trips(
    queue: Queue, client: httpx.AsyncClient, value: Any
) -> None:
    """A result is refused by ``encode_result`` with NotSerializable, or stored and served exactly."""

    async def fn() -> Any: ...

    signature = TaskSignature(fn, context_type=type(None), name="fn")
    try:
        encoded = signature.encode_result(value)
    except NotSerializable:
        assert not fits(value)
        return
    assert fits(value)
    if "noop" not in queue.tasks:

        @queue.task(name="noop")
        async def noop() -> None: ...

    job = await queue.tasks["noop"].enqueue()
    (claimed,) = await queue.backend.claim([queue.name], "w", 1, 30.0)
    assert claimed.id == job.id and claimed.lease_token is not None
    assert await queue.backend.complete([Ack(job.id, claimed.lease_token, encoded)]) == [True]
    for served in await _served(queue, client, job.id):
        assert same(served["result"], value), served["result"]


def _key_ok(s: str) -> bool:
    return 1 <= len(s) <= MAX_KEY and "\x00" not in s and _text_ok(s)


def _stored_key(key: str) -> str | None:
    """What a per-call ``key=`` becomes on a task without parameters: None when it must be refused.

    A key is a template over the task's arguments: one naming a field cannot be built here, and a
    malformed one (a lone brace) is refused; a key without fields is stored as it is.
    """
    try:
        fields = [f for _, f, _, _ in string.Formatter().parse(key) if f is not None]
    except ValueError:
        return None
    return None if fields or not _key_ok(key) else key


keys = st.one_of(text, st.sampled_from(["k" * MAX_KEY, "k" * (MAX_KEY + 1), "\U0001f600" * MAX_KEY]))


@PROFILE
@given(key=keys, unique=keys)
async def test_key_and_unique_are_refused_or_round_trip(
    queue: Queue, client: httpx.AsyncClient, key: str, unique: str
) -> None:
    """``key=`` and ``unique=`` are refused with BadKey, or stored, served and honoured exactly."""
    if "keyed" not in queue.tasks:

        @queue.task(name="keyed")
        async def keyed() -> None: ...

    task = queue.tasks["keyed"]
    try:
        job = await task.options(key=key, unique=unique).enqueue()
    except (BadKey, ArgumentError, ConfigError) as exc:
        assert _stored_key(key) is None or not _key_ok(unique), exc
        if isinstance(exc, BadKey):
            assert not _key_ok(key) or not _key_ok(unique)
        return
    assert _stored_key(key) == key and _key_ok(unique)
    for served in await _served(queue, client, job.id):
        assert (served["key"], served["unique"]) == (key, unique)
    again = await task.options(key=key, unique=unique).enqueue()
    assert again.id == job.id, "the unique value holds"
    await job.cancel()  # frees the unique value for a later example


def _name_ok(s: str) -> bool:
    return 1 <= len(s) <= MAX_NAME and "\x00" not in s and _text_ok(s)


names = st.one_of(text, st.sampled_from(["q" * MAX_NAME, "q" * (MAX_NAME + 1), "a:b", "a b/c?d"]))


@settings(PROFILE, max_examples=30)
@given(queue_name=names, task_name=names)
async def test_queue_and_task_names_are_refused_or_round_trip(
    make_queue: Any, queue_name: str, task_name: str
) -> None:
    """Odd queue and task names are refused with ConfigError, or stored, listed and served exactly."""
    try:
        queue = make_queue(queue_name)

        @queue.task(name=task_name)
        async def fn() -> None: ...

    except ConfigError:
        assert not (_name_ok(queue_name) and _name_ok(task_name))
        return
    assert _name_ok(queue_name) and _name_ok(task_name)
    job = await fn.enqueue()
    async with client_for(_app(queue)) as client:
        for served in await _served(queue, client, job.id):
            assert (served["queue"], served["task"]) == (queue_name, task_name)
        by_task = (await client.get("/jobs", params={"task": task_name})).json()["items"]
        assert job.id in [j["id"] for j in by_task]
        stats = (await client.get("/jobs/stats")).json()
        assert stats["queue"] == queue_name and stats["total"] >= 1

"""Pure pieces: retry delays, ids, settings, JSON checks, task options."""

from __future__ import annotations

import random
import uuid
from datetime import datetime, timedelta

import pytest

from conveyor import Context, Queue, Retry, Settings
from conveyor.errors import ArgumentError, ConfigError, NotSerializable
from conveyor.model import new_id
from conveyor.serde import check_json


def test_retry_delay_grows_exponentially_and_is_capped() -> None:
    """Without jitter the delay doubles per attempt and never passes max_delay."""
    policy = Retry(attempts=10, backoff=0.5, jitter=False, max_delay=3.0)
    assert [policy.delay(n) for n in range(1, 6)] == [0.5, 1.0, 2.0, 3.0, 3.0]


def test_retry_jitter_stays_between_half_and_full_delay() -> None:
    """With jitter each delay is drawn from [delay/2, delay]."""
    policy = Retry(attempts=5, backoff=2.0, jitter=True)
    rng = random.Random(7)
    draws = [policy.delay(3, rng) for _ in range(200)]
    assert all(4.0 <= d <= 8.0 for d in draws)
    assert len(set(draws)) > 100


def test_retries_as_an_int_counts_retries_after_the_first_attempt() -> None:
    """retries=3 means four attempts in all; bad values are a ConfigError."""
    assert Retry.of(3) == Retry(attempts=4)
    for bad in (-1, True, "3"):
        with pytest.raises(ConfigError):
            Retry.of(bad)  # type: ignore[arg-type]
    with pytest.raises(ConfigError):
        Retry(attempts=0)


def test_ids_are_uuid7_and_strictly_increasing_in_one_process() -> None:
    """new_id() gives version-7 UUIDs that sort in creation order, even within a millisecond."""
    ids = [new_id() for _ in range(5000)]
    assert ids == sorted(ids)
    assert len(set(ids)) == len(ids)
    parsed = uuid.UUID(ids[0])
    assert parsed.version == 7
    ms = int(ids[0].replace("-", "")[:12], 16)
    assert abs(ms / 1000 - datetime.now().timestamp()) < 60


def test_settings_reject_unknown_keys_and_bad_values() -> None:
    """A typo in a setting is an error, never silently dropped."""
    with pytest.raises(TypeError):
        Settings(leese=3.0)  # type: ignore[call-arg]
    with pytest.raises(ConfigError):
        Settings(lease=0.5)
    with pytest.raises(ConfigError):
        Settings(retention=0)


@pytest.mark.parametrize(
    "value", [{1, 2}, b"x", float("nan"), float("inf"), object(), {1: "a"}, [datetime.now()]]
)
def test_check_json_refuses_what_json_cannot_hold(value: object) -> None:
    """Sets, bytes, NaN/Infinity, objects, non-str keys and datetimes are not plain JSON."""
    with pytest.raises(NotSerializable):
        check_json(value, "x")


def test_check_json_accepts_nested_plain_json() -> None:
    """Nested dicts and lists of str, int, float, bool and None are fine."""
    check_json({"a": [1, 2.5, True, None, {"b": "c"}]}, "x")


def test_options_validate_delay_at_and_priority() -> None:
    """delay and at are exclusive, at must be aware, priority an int, timeout positive."""
    queue = Queue("memory://")

    @queue.task
    async def t() -> None: ...

    with pytest.raises(ConfigError):
        t.options(delay=1, at=datetime.now().astimezone())
    with pytest.raises(ConfigError):
        t.options(at=datetime.now())
    with pytest.raises(ConfigError):
        t.options(priority="high")  # type: ignore[arg-type]
    with pytest.raises(ConfigError):
        t.options(timeout=0)
    with pytest.raises(ConfigError):
        t.options(delay=timedelta(seconds=-1))


def test_a_key_template_must_name_parameters_of_the_task() -> None:
    """key="x:{nope}" on a task without `nope` fails at registration, not at enqueue."""
    queue = Queue("memory://")
    with pytest.raises(ConfigError, match="nope"):

        @queue.task(key="x:{nope}")
        async def t(a: int) -> None: ...


def test_registering_two_tasks_with_one_name_is_an_error() -> None:
    """Task names are unique per queue."""
    queue = Queue("memory://")

    @queue.task(name="same")
    async def a() -> None: ...

    with pytest.raises(ConfigError, match="same"):

        @queue.task(name="same")
        async def b() -> None: ...


def test_unknown_backend_scheme_is_a_config_error_and_passwords_are_masked() -> None:
    """An unknown URL scheme is refused; a repr never shows the password."""
    with pytest.raises(ConfigError):
        Queue("mongodb://localhost/x")
    queue = Queue("redis://user:s3cret@localhost:6379/0")
    assert "s3cret" not in repr(queue) and "s3cret" not in repr(queue.backend)


def test_a_task_naming_local_types_still_registers_with_ctx_injected() -> None:
    """Unresolvable annotations (local classes) leave those parameters unvalidated, not broken."""

    class Local:  # not visible to typing.get_type_hints from module scope
        pass

    queue = Queue("memory://")

    @queue.task
    async def t(ctx: Context, a: int, b: Local | None = None) -> int:
        return a

    assert t.signature.context_params == ["ctx"]
    assert list(t.signature.signature.parameters) == ["a", "b"]
    with pytest.raises(ArgumentError):
        t.prepare("not an int")


def test_progress_message_is_bounded_and_valid_unicode() -> None:
    """A progress message is cut to MAX_PROGRESS_MESSAGE characters and loses lone surrogates."""
    from conveyor.context import MAX_PROGRESS_MESSAGE, Context

    seen: list[tuple[float, str]] = []
    ctx = Context(job_id="j", task="t", queue="q", attempt=1,
                  report=lambda f, m: seen.append((f, m)))
    ctx.progress(0.5, "x" * 10_000)
    ctx.progress(0.6, "bad \ud800 half")
    ctx.progress(0.7, "ok ✓ 𝄞")
    assert len(seen[0][1]) == MAX_PROGRESS_MESSAGE and seen[0][1].endswith("…")
    assert seen[1][1] == "bad ? half"
    assert seen[2][1] == "ok ✓ 𝄞"


@pytest.mark.parametrize("fraction", ["0.5", None, True, 1.5, -0.1, float("nan"), 1 + 0j])
def test_progress_fraction_of_the_wrong_type_or_range_is_an_option_error(fraction: object) -> None:
    """``ctx.progress`` refuses a fraction that is not a number from 0 to 1 with OptionError."""
    from conveyor.context import Context
    from conveyor.errors import OptionError

    ctx = Context(job_id="j", task="t", queue="q", attempt=1, report=lambda f, m: None)
    with pytest.raises(OptionError):
        ctx.progress(fraction, "x")  # type: ignore[arg-type]

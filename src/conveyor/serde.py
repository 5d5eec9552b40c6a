"""Arguments and results to JSON and back, checked against the task's signature with pydantic.

No pickle anywhere: a stored payload is data, never code. Parameters annotated with
:class:`~conveyor.context.Context` (and FastAPI dependencies) are injected by the worker, so they
are not part of the payload.
"""

from __future__ import annotations

import inspect
import json
import math
import traceback
import typing
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import pydantic
from pydantic import ConfigDict, TypeAdapter
from pydantic_core import PydanticSerializationError

from conveyor.errors import (
    ArgumentError,
    BadKey,
    BadMeta,
    ConfigError,
    LimitExceeded,
    NotSerializable,
    PayloadTooLarge,
)
from conveyor.model import EMPTY_META, ErrorInfo

__all__ = [
    "MAX_DEPTH",
    "MAX_INT",
    "MAX_KEY_CHARS",
    "MAX_META_BYTES",
    "MAX_META_ENTRIES",
    "MAX_META_KEY_CHARS",
    "MAX_NAME_CHARS",
    "MIN_INT",
    "TaskSignature",
    "check_json",
    "check_key",
    "check_meta",
    "check_name",
    "dump_json",
    "encoded_size",
    "error_info",
    "load_meta",
    "load_stored",
]

_STRICT = ConfigDict(allow_inf_nan=False, arbitrary_types_allowed=False)
_JSON_LEAVES = (str, int, float, bool, type(None))
_HINTS = {
    "set": "a list",
    "frozenset": "a list",
    "bytes": "a str (base64 or text) or a path to the data",
    "bytearray": "a str (base64 or text)",
    "datetime": "an ISO 8601 str, or annotate the parameter as datetime",
}


def _hint(value: object) -> str:
    name = type(value).__name__
    if name in _HINTS:
        return f"pass {_HINTS[name]} instead"
    return (
        "pass plain data instead (an id, a str, a dict): a task must not receive live objects "
        "such as a database session or a request; load them inside the task"
    )


#: the deepest nesting of lists and dicts a payload or result may have (``[[1]]`` is 2 deep)
MAX_DEPTH = 100
#: integers must fit in 64 bits (signed), which every JSON reader of the store's clients takes exactly
MIN_INT, MAX_INT = -(2**63), 2**63 - 1
#: the longest ``key=`` / ``unique=`` value, in characters
MAX_KEY_CHARS = 1024
#: the longest task or queue name, in characters
MAX_NAME_CHARS = 200
#: a job's meta: at most this many entries ...
MAX_META_ENTRIES = 64
#: ... each key 1 to this many characters ...
MAX_META_KEY_CHARS = 256
#: ... and at most this many bytes as JSON, all entries together
MAX_META_BYTES = 8192

# a path to a value inside a payload, kept as a linked list and rendered only for an error message
_Path = tuple[Any, ...]


def _render(where: str, path: _Path | None) -> str:
    steps: list[str] = []
    while path is not None:
        path, step = path
        steps.append(f"[{step!r}]")
    steps.reverse()
    if len(steps) > 8:  # a deep path: its start and its end say enough
        steps[4:-3] = [f"...({len(steps) - 7} more)..."]
    return where + "".join(steps)


def _check_text(text: str, where: str) -> None:
    """Refuse a str that cannot be written as UTF-8 (a lone surrogate such as ``"\\ud800"``)."""
    if text.isascii():
        return
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise NotSerializable(
            f"{where} holds {text[exc.start]!r} at index {exc.start}, a lone surrogate: it is not "
            "Unicode text and cannot be stored (decode bytes with errors='replace' first)"
        ) from None


_Stack = list[tuple[Any, int, "_Path | None"]]


def _check_one(value: Any, depth: int, path: _Path | None, stack: _Stack, where: str, strict: bool) -> None:
    """Check one value; a container goes on ``stack`` to be opened later."""
    if isinstance(value, str):
        _check_text(value, _render(where, path) if not value.isascii() else "")
    elif isinstance(value, bool) or value is None:
        return
    elif isinstance(value, int):
        if not MIN_INT <= value <= MAX_INT:
            digits = len(str(abs(value))) if value.bit_length() < 14_000 else "over 4,000"
            raise LimitExceeded(
                f"{_render(where, path)} is an int of {digits} digits, past the 64-bit range "
                "[-2**63, 2**63 - 1]: pass it as a str"
            )
    elif isinstance(value, float):
        if not math.isfinite(value):
            raise NotSerializable(f"{_render(where, path)} is {value!r}: JSON has no NaN or Infinity")
    elif isinstance(value, list | tuple | dict) or (not strict and isinstance(value, set | frozenset)):
        if depth >= MAX_DEPTH:
            raise LimitExceeded(
                f"{_render(where, path)} nests lists/dicts more than {MAX_DEPTH} deep "
                "(or contains itself)"
            )
        stack.append((value, depth, path))
    elif strict:
        raise NotSerializable(
            f"{_render(where, path)} is a {type(value).__module__}.{type(value).__qualname__}, "
            f"which is not JSON: {_hint(value)}"
        )


def _walk(value: Any, where: str, *, strict: bool) -> None:
    """Check a value against the JSON limits, without recursion (so any depth is safe to check).

    ``strict``: every value must be plain JSON. Otherwise values of other types are left to the
    pydantic adapter that follows, and only what can be seen in containers is checked.
    Plain leaves are checked inline (this runs on every enqueue); anything else, and every error,
    goes through :func:`_check_one`.
    """
    stack: _Stack = []
    _check_one(value, 0, None, stack, where, strict)
    while stack:
        container, depth, path = stack.pop()
        depth += 1
        pairs: Iterable[tuple[Any, Any]]
        if isinstance(container, dict):
            for k in container:
                if type(k) is not str or not (k.isascii() or _utf8(k)):
                    _check_dict_key(k, _render(where, path), strict)
            pairs = container.items()
        else:
            pairs = enumerate(container)
        for k, v in pairs:
            t = type(v)
            if t is str:
                if v.isascii() or _utf8(v):
                    continue
            elif t is int:
                if MIN_INT <= v <= MAX_INT:
                    continue
            elif t is float:
                if v - v == 0.0:  # finite (NaN and infinities give NaN)
                    continue
            elif v is None or t is bool:
                continue
            elif (t is list or t is dict) and depth < MAX_DEPTH:
                stack.append((v, depth, (path, k)))
                continue
            _check_one(v, depth, (path, k), stack, where, strict)


def _check_dict_key(key: object, where: str, strict: bool) -> None:
    if isinstance(key, str):
        _check_text(key, f"{where} key")
    elif strict:
        raise NotSerializable(f"{where} has a {type(key).__name__} key {key!r}: JSON keys are str")


def _utf8(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def check_json(value: Any, where: str) -> None:
    """Raise :class:`NotSerializable` unless ``value`` is plain, finite JSON within the limits.

    The limits (a :class:`LimitExceeded`): nesting at most :data:`MAX_DEPTH` deep, integers in
    the signed 64-bit range; strings must be valid Unicode (no lone surrogates).
    """
    _walk(value, where, strict=True)


def check_name(name: object, what: str) -> str:
    """A task or queue name: a non-empty str of at most :data:`MAX_NAME_CHARS` characters,
    no NUL and no lone surrogate. Raises :class:`ConfigError`."""
    if not isinstance(name, str) or not name:
        raise ConfigError(f"a {what} name must be a non-empty str, got {name!r}")
    if len(name) > MAX_NAME_CHARS or "\x00" in name:
        raise ConfigError(
            f"a {what} name must be at most {MAX_NAME_CHARS} characters, without NUL: {name[:50]!r}..."
        )
    try:
        _check_text(name, f"the {what} name")
    except NotSerializable as exc:
        raise ConfigError(exc.message) from None
    return name


def check_key(value: str, what: str) -> str:
    """A ``key=`` or ``unique=`` value: 1 to :data:`MAX_KEY_CHARS` characters, no NUL and no lone
    surrogate. Raises :class:`BadKey`."""
    if not value or len(value) > MAX_KEY_CHARS or "\x00" in value:
        raise BadKey(
            f"{what}= must be 1 to {MAX_KEY_CHARS} characters without NUL, got "
            f"{len(value)} characters: {value[:50]!r}{'...' if len(value) > 50 else ''}"
        )
    try:
        _check_text(value, f"{what}=")
    except NotSerializable as exc:
        raise BadKey(exc.message) from None
    return value


def check_meta(meta: object) -> Mapping[str, str]:
    """A job's meta as a plain dict, or raise :class:`BadMeta`.

    A mapping of at most :data:`MAX_META_ENTRIES` str keys (1 to :data:`MAX_META_KEY_CHARS`
    characters, no NUL) to str values, valid Unicode, at most :data:`MAX_META_BYTES` as JSON.
    """
    if not isinstance(meta, Mapping):
        raise BadMeta(f"meta must be a dict of str to str, got {type(meta).__name__}")
    if not meta:
        return EMPTY_META
    if len(meta) > MAX_META_ENTRIES:
        raise BadMeta(f"meta holds {len(meta)} entries, over the limit of {MAX_META_ENTRIES}")
    out: dict[str, str] = {}
    for key, value in meta.items():
        if not isinstance(key, str) or not isinstance(value, str):
            raise BadMeta(
                f"meta must map str to str, got {type(key).__name__} {key!r}: "
                f"{type(value).__name__}"
            )
        if not key or len(key) > MAX_META_KEY_CHARS or "\x00" in key:
            raise BadMeta(
                f"a meta key must be 1 to {MAX_META_KEY_CHARS} characters without NUL, "
                f"got {key[:50]!r}"
            )
        try:
            _check_text(key, "a meta key")
            _check_text(value, f"meta[{key!r}]")
        except NotSerializable as exc:
            raise BadMeta(exc.message) from None
        out[key] = value
    size = len(json.dumps(out, separators=(",", ":"), ensure_ascii=False).encode())
    if size > MAX_META_BYTES:
        raise BadMeta(f"meta is {size} bytes as JSON, over the limit of {MAX_META_BYTES}")
    return out


def load_meta(text: str | None) -> Mapping[str, str]:
    """Stored meta (JSON text, or None for none) back as a mapping; ValueError if malformed."""
    if not text:
        return EMPTY_META
    value = json.loads(text)
    if not isinstance(value, dict) or not all(isinstance(v, str) for v in value.values()):
        raise ValueError(f"stored meta is not an object of strings: {text[:100]!r}")
    return value


def dump_json(value: Any) -> str:
    """Compact JSON text, refusing NaN and Infinity (backends store payloads with this)."""
    return json.dumps(value, separators=(",", ":"), allow_nan=False)


def load_stored(text: str | None) -> Any:
    """Decode stored JSON; text that is not JSON comes back as it is, for the worker to reject."""
    if text is None:
        return None
    try:
        return json.loads(text)
    except ValueError:
        return text


def encoded_size(args: list[Any], kwargs: dict[str, Any]) -> int:
    """Bytes of the stored JSON payload."""
    return len(json.dumps([args, kwargs], separators=(",", ":")).encode())


def _adapter(annotation: Any) -> TypeAdapter[Any] | None:
    """A pydantic adapter for a parameter's annotation; None where anything JSON goes."""
    if annotation is inspect.Parameter.empty or annotation is Any or annotation is object:
        return None
    try:
        return TypeAdapter(annotation, config=_STRICT)
    except pydantic.PydanticUserError:
        # models, dataclasses and TypedDicts carry their own config
        return TypeAdapter(annotation)


def _is_dependency(obj: object) -> bool:
    """A FastAPI ``Depends(...)`` marker, recognised without importing FastAPI."""
    return hasattr(obj, "dependency") and type(obj).__name__ in ("Depends", "Security")


def _resolve_hints(fn: Callable[..., Any], sig: inspect.Signature, name: str) -> dict[str, Any]:
    """The task's annotations as objects; one by one when some cannot be resolved.

    A task defined inside a function may name local types that ``get_type_hints`` cannot see:
    those parameters are left unvalidated (plain JSON) rather than failing the whole task. A
    dependency must resolve, though, or it would silently become a payload argument.
    """
    try:
        return typing.get_type_hints(fn, include_extras=True)
    except Exception:
        pass
    namespace = dict(getattr(fn, "__globals__", {}))
    hints: dict[str, Any] = {}
    for param in [*sig.parameters.values(), None]:
        raw = sig.return_annotation if param is None else param.annotation
        key = "return" if param is None else param.name
        if not isinstance(raw, str):
            hints[key] = raw
            continue
        try:
            hints[key] = eval(raw, namespace)
        except Exception:
            if "Depends(" in raw or "Security(" in raw:
                raise ConfigError(
                    f"task {name!r}: the annotation of {key!r} ({raw}) cannot be resolved, so its "
                    "dependency cannot be found; import the names it uses at module level"
                ) from None
            hints[key] = inspect.Parameter.empty
    return hints


_MAX_MESSAGE = 10_000
_MAX_TRACEBACK = 100_000


def _printable(text: str, limit: int) -> str:
    """Valid UTF-8 text (lone surrogates escaped) of at most ``limit`` characters."""
    if len(text) > limit:
        cut = len(text) - limit
        text = f"{text[: limit // 2]}\n... [{cut} characters cut] ...\n{text[-(limit // 2) + 40:]}"
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def error_info(exc: BaseException) -> ErrorInfo:
    """Type, message and traceback of an exception, for storage; never raises.

    Whatever the exception does (a ``__str__`` that raises, a traceback that cannot be formatted,
    a message of megabytes or with lone surrogates), the result is plain, bounded, printable text.
    """
    cls = type(exc)
    try:
        module, qualname = cls.__module__, cls.__qualname__
        name = qualname if module == "builtins" else f"{module}.{qualname}"
    except BaseException:
        name = "Exception"
    # user code runs here (__str__, __notes__, frames' __repr__), and it may raise anything, even
    # SystemExit or KeyboardInterrupt: none of it may escape, or the worker itself would stop
    try:
        message = str(exc)
    except BaseException:
        try:
            message = f"<{cls.__qualname__} whose str() failed>"
        except BaseException:
            message = "<an exception whose str() failed>"
    if not message and not isinstance(exc, Exception):
        message = name  # KeyboardInterrupt(), GeneratorExit(): say what ended the task
    try:
        trace = "".join(traceback.format_exception(exc))
    except BaseException as broken:
        try:
            frames = "".join(traceback.format_tb(exc.__traceback__))
        except BaseException:
            frames = ""
        why = type(broken).__name__
        trace = f"{frames}{name}: {message}\n(the full traceback could not be formatted: {why})\n"
    return {
        "type": _printable(name, 500),
        "message": _printable(message, _MAX_MESSAGE),
        "traceback": _printable(trace, _MAX_TRACEBACK),
    }


class TaskSignature:
    """What a task accepts: validates enqueue arguments and rebuilds them in the worker."""

    def __init__(
        self, fn: Callable[..., Any], *, context_type: type, name: str | None = None
    ) -> None:
        self.name: str = name or str(getattr(fn, "__qualname__", repr(fn)))
        sig = inspect.signature(fn)
        hints = _resolve_hints(fn, sig, self.name)
        self.context_params: list[str] = []
        self.dependency_params: dict[str, Any] = {}
        payload: list[inspect.Parameter] = []
        self.adapters: dict[str, TypeAdapter[Any] | None] = {}
        self.var_kinds: dict[str, inspect._ParameterKind] = {}
        for param in sig.parameters.values():
            annotation = hints.get(param.name, param.annotation)
            base: Any = annotation
            extras: tuple[Any, ...] = ()
            if typing.get_origin(annotation) is typing.Annotated:
                base, *rest = typing.get_args(annotation)
                extras = tuple(rest)
            if base is context_type:
                self.context_params.append(param.name)
                continue
            dep = next((e for e in extras if _is_dependency(e)), None)
            if dep is None and _is_dependency(param.default):
                dep = param.default
            if dep is not None:
                self.dependency_params[param.name] = dep
                continue
            payload.append(param)
            self.adapters[param.name] = _adapter(annotation)
            self.var_kinds[param.name] = param.kind
        self.signature = sig.replace(parameters=payload)
        self._injected_names = frozenset(self.context_params) | frozenset(self.dependency_params)
        self.full_signature = sig
        ret = hints.get("return", sig.return_annotation)
        self.return_adapter = None if ret in (None, type(None)) else _adapter(ret)

    # -- enqueue side ----------------------------------------------------------------------
    def bind(self, args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> inspect.BoundArguments:
        """Match arguments to parameters, or raise :class:`ArgumentError`."""
        try:
            bound = self.signature.bind(*args, **kwargs)
        except TypeError as exc:
            raise ArgumentError(f"{self.name}(): {exc}") from None
        if self._injected_names and not self._injected_names.isdisjoint(kwargs):
            # a **kwargs key named like the ctx or a dependency would clash at the call
            clash = sorted(self._injected_names & set(kwargs))
            raise ArgumentError(
                f"{self.name}(): {', '.join(map(repr, clash))} is filled in by the worker "
                "(a Context or a dependency), not passed as an argument"
            )
        return bound

    def arguments(self, bound: inspect.BoundArguments) -> dict[str, Any]:
        """All arguments by name, defaults included (for key templates)."""
        full = self.signature.bind(*bound.args, **bound.kwargs)
        full.apply_defaults()
        return dict(full.arguments)

    def encode(
        self, bound: inspect.BoundArguments, max_bytes: int
    ) -> tuple[list[Any], dict[str, Any]]:
        """Validate bound arguments and turn them into JSON-ready ``(args, kwargs)``."""
        encoded: dict[str, Any] = {}
        for name, value in bound.arguments.items():
            kind = self.var_kinds[name]
            if kind is inspect.Parameter.VAR_POSITIONAL:
                encoded[name] = [self._encode_one(f"{name}[{i}]", name, v) for i, v in enumerate(value)]
            elif kind is inspect.Parameter.VAR_KEYWORD:
                for k in value:
                    _check_text(k, f"{self.name}() keyword argument name")
                encoded[name] = {k: self._encode_one(k, name, v) for k, v in value.items()}
            else:
                encoded[name] = self._encode_one(name, name, value)
        rebound = inspect.BoundArguments(self.signature, encoded)
        args, kwargs = list(rebound.args), dict(rebound.kwargs)
        size = encoded_size(args, kwargs)
        if size > max_bytes:
            raise PayloadTooLarge(
                f"{self.name}(): the arguments are {size} bytes as JSON, over the {max_bytes}-byte "
                "cap: store the data elsewhere (a file, a table) and pass its id"
            )
        return args, kwargs

    def _encode_one(self, where: str, param: str, value: Any) -> Any:
        adapter = self.adapters[param]
        label = f"{self.name}() argument {where!r}"
        if adapter is None:
            check_json(value, label)
            return value
        _walk(value, label, strict=False)
        try:
            validated = adapter.validate_python(value)
            out = adapter.dump_python(validated, mode="json")
        except pydantic.ValidationError as exc:
            raise ArgumentError(f"{label}: {_short(exc)}") from None
        except (PydanticSerializationError, RecursionError) as exc:
            raise NotSerializable(f"{label} cannot be stored as JSON: {exc}; {_hint(value)}") from None
        check_json(out, label)
        return out

    # -- worker side -----------------------------------------------------------------------
    def decode(
        self, args: list[Any], kwargs: dict[str, Any], injected: Mapping[str, Any] | None = None
    ) -> tuple[list[Any], dict[str, Any]]:
        """The call's ``(args, kwargs)``: the stored payload validated, plus injected values.

        Raises :class:`ArgumentError` when the payload does not fit the signature.
        """
        return self.assemble(self.decode_values(args, kwargs), injected or {})

    def assemble(
        self, values: Mapping[str, Any], injected: Mapping[str, Any]
    ) -> tuple[list[Any], dict[str, Any]]:
        """Lay out payload values and injected ones (ctx, dependencies) by the full signature."""
        merged = {**values, **injected}
        ordered = {name: merged[name] for name in self.full_signature.parameters if name in merged}
        call = inspect.BoundArguments(self.full_signature, ordered)
        return list(call.args), dict(call.kwargs)

    def decode_values(self, args: list[Any], kwargs: dict[str, Any]) -> dict[str, Any]:
        """The stored payload validated into Python values, by parameter name."""
        if not isinstance(args, list) or not isinstance(kwargs, dict):
            raise ArgumentError(f"{self.name}(): stored payload is malformed (args/kwargs)")
        bound = self.bind(tuple(args), kwargs)
        out: dict[str, Any] = {}
        for name, value in bound.arguments.items():
            adapter = self.adapters[name]
            if adapter is None:
                out[name] = value
                continue
            kind = self.var_kinds[name]
            try:
                if kind is inspect.Parameter.VAR_POSITIONAL:
                    out[name] = tuple(_from_json(adapter, v) for v in value)
                elif kind is inspect.Parameter.VAR_KEYWORD:
                    out[name] = {k: _from_json(adapter, v) for k, v in value.items()}
                else:
                    out[name] = _from_json(adapter, value)
            except pydantic.ValidationError as exc:
                raise ArgumentError(f"{self.name}() stored argument {name!r}: {_short(exc)}") from None
        return out

    def encode_result(self, value: Any) -> Any:
        """The task's return value as JSON, or raise :class:`NotSerializable`.

        The same limits as arguments hold (:func:`check_json`): a result past them is the job's
        failure (a :class:`LimitExceeded`), never a value the store cannot write.
        """
        label = f"{self.name}() return value"
        if self.return_adapter is None:
            check_json(value, label)
            return value
        _walk(value, label, strict=False)
        try:
            out = self.return_adapter.dump_python(value, mode="json")
        except (PydanticSerializationError, RecursionError) as exc:
            raise NotSerializable(f"{label} cannot be stored as JSON: {exc}") from None
        check_json(out, label)
        return out

    def decode_result(self, value: Any) -> Any:
        """A stored result, validated back into the return annotation where there is one."""
        if self.return_adapter is None or value is None:
            return value
        try:
            return self.return_adapter.validate_python(value)
        except pydantic.ValidationError:
            return value


def _from_json(adapter: TypeAdapter[Any], value: Any) -> Any:
    """A stored (JSON) value validated into its parameter's type.

    Python mode first, the fast path; a strict type (``Strict()``, ``strict=True`` models) takes
    a tuple, a UUID or a datetime only as such in Python mode, but as their JSON forms in JSON
    mode, so a value that enqueue accepted is rebuilt here too.
    """
    try:
        return adapter.validate_python(value)
    except pydantic.ValidationError:
        return adapter.validate_json(dump_json(value))


def _short(exc: pydantic.ValidationError) -> str:
    parts = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"])
        parts.append(f"{loc + ': ' if loc else ''}{err['msg']}")
    return "; ".join(parts)

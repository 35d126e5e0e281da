"""One JSON-RPC message off the wire, checked strictly, or the error response that refuses it.

The SDK's own readers drop what does not parse (stdio: a debug log line, and the client waits
forever) and parse leniently (duplicate keys: the last wins; lone UTF-16 surrogates and NaN pass
on stdio). Both nixcell transports run every incoming message through ``read_message`` first, so
a message means one thing to every reader, and anything else gets a JSON-RPC error:

- not UTF-8, not JSON, a lone surrogate escape (``"\\ud800"``), ``NaN``/``Infinity``, a number
  out of range, a duplicate key, nesting deeper than ``MAX_DEPTH``: -32700 parse error, id null;
- a JSON array (a batch: MCP removed JSON-RPC batching in 2025-06-18, and the SDK speaks
  2025-11-25 and 2026-07-28), a non-object, no or another ``jsonrpc`` than ``"2.0"``, an id that
  is not a string or an integer, a non-string method, params that are not an object, members that
  mix a request with a response, unknown members: -32600 invalid request, with the message's id
  when it has a usable one, else null.

Unknown methods are the server's to answer (-32601); a well-formed notification with bad params
gets no response, as JSON-RPC says, and the SDK drops it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import mcp_types as types
from pydantic import ValidationError

MAX_DEPTH = 64  # MCP messages nest a few levels; tool arguments a few more
_REQUEST = frozenset({"jsonrpc", "id", "method", "params"})
_NOTIFICATION = frozenset({"jsonrpc", "method", "params"})
_RESULT = frozenset({"jsonrpc", "id", "result"})
_ERROR = frozenset({"jsonrpc", "id", "error"})
_MODELS: dict[frozenset[str], Any] = {
    _REQUEST: types.JSONRPCRequest,
    _NOTIFICATION: types.JSONRPCNotification,
    _RESULT: types.JSONRPCResponse,
    _ERROR: types.JSONRPCError,
}


@dataclass(frozen=True)
class Rejected:
    """A message refused: the error response to send, and why (for the log)."""

    response: types.JSONRPCError

    @property
    def reason(self) -> str:
        return self.response.error.message


class _Malformed(Exception):
    """Raised while parsing; becomes a parse error."""


def _reject(code: int, message: str, request_id: Any = None) -> Rejected:
    error = types.ErrorData(code=code, message=message)
    return Rejected(types.JSONRPCError(jsonrpc="2.0", id=request_id, error=error))


def parse_error(message: str) -> Rejected:
    return _reject(types.PARSE_ERROR, f"Parse error: {message}")


def invalid_request(message: str, request_id: Any = None) -> Rejected:
    return _reject(types.INVALID_REQUEST, f"Invalid request: {message}", request_id)


def _pairs(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise _Malformed(f"duplicate key {key[:64]!r}")
        result[key] = value
    return result


def _constant(name: str) -> Any:
    raise _Malformed(f"{name} is not JSON")


def _float(text: str) -> float:
    value = float(text)
    if value in (float("inf"), float("-inf")):
        raise _Malformed("number out of range")
    return value


def _check_text(value: Any, depth: int = 0) -> None:
    """Every string is valid Unicode (no lone surrogate escapes); nesting is bounded."""
    if depth > MAX_DEPTH:
        raise _Malformed(f"nested deeper than {MAX_DEPTH} levels")
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            raise _Malformed("a string holds a lone UTF-16 surrogate escape") from None
    elif isinstance(value, dict):
        for key, item in value.items():
            _check_text(key, depth + 1)
            _check_text(item, depth + 1)
    elif isinstance(value, list):
        for item in value:
            _check_text(item, depth + 1)


def parse_json(data: bytes) -> Any | Rejected:
    """The JSON value of ``data``, or the parse error refusing it."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        return parse_error(f"not valid UTF-8 (byte {exc.start})")
    try:
        value = json.loads(
            text, object_pairs_hook=_pairs, parse_constant=_constant, parse_float=_float
        )
        _check_text(value)
    except json.JSONDecodeError as exc:
        return parse_error(f"{exc.msg} (line {exc.lineno} column {exc.colno})")
    except _Malformed as exc:
        return parse_error(str(exc))
    except (ValueError, RecursionError):  # an integer of too many digits, deep nesting
        return parse_error("a number or a nesting the parser refuses")
    return value


def _usable_id(message: dict[str, Any]) -> Any:
    value = message.get("id")
    if isinstance(value, str) or (isinstance(value, int) and not isinstance(value, bool)):
        return value
    return None


def check_message(value: Any) -> types.JSONRPCMessage | Rejected:
    """The typed message of a parsed JSON value, or the invalid-request error refusing it."""
    if isinstance(value, list):
        return invalid_request(
            "batches (JSON arrays) are not supported: MCP removed JSON-RPC batching in "
            "2025-06-18; send one message per request"
        )
    if not isinstance(value, dict):
        return invalid_request(f"a message must be a JSON object, not {_kind(value)}")
    # a response's id is the server's own request id: echoing it would answer that request
    rid = _usable_id(value) if "method" in value else None
    if "jsonrpc" not in value:
        return invalid_request("member 'jsonrpc' (\"2.0\") is missing", rid)
    if value["jsonrpc"] != "2.0":
        return invalid_request("member 'jsonrpc' must be \"2.0\"", rid)
    if "id" in value and _usable_id(value) is None:
        return invalid_request("'id' must be a string or an integer")
    keys = frozenset(value)
    if "method" in value:
        shape = _REQUEST if "id" in value else _NOTIFICATION
        if not isinstance(value["method"], str) or not value["method"]:
            return invalid_request("'method' must be a non-empty string", rid)
        params = value.get("params")
        if params is not None and not isinstance(params, dict):
            return invalid_request("'params' must be an object", rid)
    elif "result" in value:
        shape = _RESULT
    elif "error" in value:
        shape = _ERROR
    else:
        return invalid_request("neither a request ('method') nor a response", rid)
    extra = sorted(keys - shape)
    if extra:
        return invalid_request(f"unexpected member {extra[0][:64]!r}", rid)
    if "id" not in value and shape is not _NOTIFICATION:
        return invalid_request("a response needs an 'id'")
    try:
        message = _MODELS[shape].model_validate(value, by_name=False)
    except ValidationError as exc:
        where = ".".join(str(p) for p in exc.errors()[0]["loc"]) or "message"
        return invalid_request(f"malformed '{where[:64]}'", rid)
    return message  # type: ignore[no-any-return]


def read_message(data: bytes) -> types.JSONRPCMessage | Rejected:
    """One message from its bytes (a stdio line or an HTTP body), checked strictly."""
    value = parse_json(data)
    if isinstance(value, Rejected):
        return value
    return check_message(value)


def _kind(value: Any) -> str:
    if value is None:
        return "null"
    return {bool: "a boolean", str: "a string", int: "a number", float: "a number"}.get(
        type(value), "another value"
    )

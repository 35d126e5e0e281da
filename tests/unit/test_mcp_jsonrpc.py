"""The JSON-RPC wire checker and the stdio line splitter, attacked with generated input.

``read_message`` is the one gate both transports use: whatever bytes arrive, it returns a
message or a JSON-RPC error (never raises), accepts only what the SDK reads the same way, and
refuses every lone surrogate, duplicate key and batch. ``Lines`` splits the same under any
chunking.
"""

from __future__ import annotations

import json
from typing import Any

import mcp_types as types
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nixcell.mcp.jsonrpc import Rejected, read_message
from nixcell.mcp.stdio import Lines

PARSE, INVALID = -32700, -32600

finite = st.floats(allow_nan=False, allow_infinity=False)
scalars = st.none() | st.booleans() | st.integers() | finite | st.text()
values = st.recursive(
    scalars, lambda inner: st.lists(inner) | st.dictionaries(st.text(), inner), max_leaves=20
)
ids = st.integers(min_value=-(2**53), max_value=2**53) | st.text(max_size=20)
params = st.none() | st.dictionaries(st.text(max_size=10), values, max_size=4)


@st.composite
def messages(draw: st.DrawFn) -> dict[str, Any]:
    kind = draw(st.sampled_from(["request", "notification", "result", "error"]))
    out: dict[str, Any] = {"jsonrpc": "2.0"}
    if kind in ("request", "result", "error"):
        out["id"] = draw(ids)
    if kind in ("request", "notification"):
        out["method"] = draw(st.text(min_size=1, max_size=30))
        p = draw(params)
        if p is not None:
            out["params"] = p
    elif kind == "result":
        out["result"] = draw(st.dictionaries(st.text(max_size=10), values, max_size=4))
    else:
        out["error"] = {"code": draw(st.integers(-40000, 40000)), "message": draw(st.text())}
    return out


def _check_rejection(result: Any) -> None:
    assert isinstance(result, Rejected)
    assert result.response.error.code in (PARSE, INVALID)
    data = json.loads(result.response.model_dump_json(by_alias=True, exclude_unset=True))
    assert data["jsonrpc"] == "2.0" and "id" in data


@settings(max_examples=300)
@given(st.binary(max_size=300))
def test_any_bytes_give_a_message_or_an_error(data):
    result = read_message(data)
    if isinstance(result, Rejected):
        _check_rejection(result)


@settings(max_examples=300)
@given(values)
def test_any_json_value_gives_a_message_or_an_error_and_accepted_means_the_sdk_agrees(value):
    data = json.dumps(value).encode()
    result = read_message(data)
    if isinstance(result, Rejected):
        _check_rejection(result)
        return
    assert isinstance(value, dict) and value["jsonrpc"] == "2.0"
    assert types.jsonrpc_message_adapter.validate_json(data, by_name=False) == result


@settings(max_examples=300)
@given(messages())
def test_well_formed_messages_pass_unchanged(message):
    data = json.dumps(message).encode()
    result = read_message(data)
    assert not isinstance(result, Rejected), result
    assert result.model_dump(by_alias=True, exclude_unset=True) == message
    assert types.jsonrpc_message_adapter.validate_json(data, by_name=False) == result


@settings(max_examples=200)
@given(messages(), st.integers(0xD800, 0xDFFF), st.sampled_from(["key", "value", "method"]))
def test_a_lone_surrogate_anywhere_is_a_parse_error(message, surrogate, where):
    escape = f"\\u{surrogate:04x}"
    if where == "method" and "method" in message:
        message["method"] = "@"
    elif where == "key":
        message["params"] = {"@": 1}
    else:
        message["params"] = {"k": ["x", "@"]}
    data = json.dumps(message).replace('"@"', f'"a{escape}b"', 1).encode()
    if "@" not in json.dumps(message):
        return
    result = read_message(data)
    assert isinstance(result, Rejected) and result.response.error.code == PARSE


@pytest.mark.parametrize(
    "data",
    [
        b'[{"jsonrpc":"2.0","id":1,"method":"ping"}]',
        b'[{"jsonrpc":"2.0","id":1,"method":"ping"},{"jsonrpc":"2.0","id":2,"method":"ping"}]',
        b"[]",
        b' [ ] ',
    ],
)
def test_batches_are_refused(data):
    result = read_message(data)
    assert isinstance(result, Rejected) and result.response.error.code == INVALID
    assert result.response.id is None and "batch" in result.reason


@given(messages(), st.sampled_from(["jsonrpc", "id", "method", "params", "result", "error"]))
def test_a_duplicate_key_is_refused(message, key):
    if key not in message:
        return
    text = json.dumps(message)
    data = text[:-1] + f", {json.dumps(key)}: {json.dumps(message[key])}}}"
    result = read_message(data.encode())
    assert isinstance(result, Rejected) and result.response.error.code == PARSE


@settings(max_examples=200)
@given(
    st.lists(st.binary(max_size=40).map(lambda b: b.replace(b"\n", b"")), max_size=10),
    st.lists(st.integers(1, 30), min_size=1, max_size=10),
    st.booleans(),
)
def test_lines_split_the_same_under_any_chunking(lines, cuts, final_newline):
    limit = 25
    data = b"\n".join(lines) + (b"\n" if final_newline and lines else b"")
    splitter = Lines(limit)
    out: list[bytes | None] = []
    pos = 0
    for cut in cuts * (len(data) // max(1, sum(cuts)) + 1):
        out += splitter.feed(data[pos : pos + cut])
        pos += cut
        if pos >= len(data):
            break
    out += splitter.end()
    expected: list[bytes | None] = []
    for n, line in enumerate(lines):
        last_open = n == len(lines) - 1 and not final_newline
        if len(line) > limit:
            expected.append(None)
        elif line or not last_open:
            expected.append(line)
    assert out == expected

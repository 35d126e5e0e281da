"""Malformed job API requests and the 4xx each must get (one-line JSON, never a 500): shared by
the HTTP-shape test (a Service double) and the real daemon's test."""

from __future__ import annotations

import json

J = {"Content-Type": "application/json"}


def _body(data: object) -> bytes:
    return json.dumps(data).encode()


MALFORMED: list[tuple[str, str, bytes | None, dict[str, str], int]] = [
    # ids
    ("GET", "/api/v1/jobs/abc", None, {}, 400),
    ("GET", "/api/v1/jobs/-1", None, {}, 400),
    ("GET", "/api/v1/jobs/0", None, {}, 400),
    ("GET", "/api/v1/jobs/01", None, {}, 400),
    ("GET", "/api/v1/jobs/1.5", None, {}, 400),
    ("GET", "/api/v1/jobs/99999999999999999999", None, {}, 400),
    ("GET", "/api/v1/jobs/9223372036854775808", None, {}, 404),
    ("GET", "/api/v1/jobs/424242", None, {}, 404),
    ("GET", "/api/v1/jobs/%00", None, {}, 400),
    ("GET", "/api/v1/jobs/%0a1", None, {}, 400),
    ("POST", "/api/v1/jobs/x/cancel", None, {}, 400),
    ("GET", "/api/v1/jobs/424242/logs?follow=1", None, {}, 404),
    ("GET", "/api/v1/jobs/424242/artifacts", None, {}, 404),
    ("GET", "/api/v1/jobs/424242/audit", None, {}, 404),
    # methods and paths
    ("DELETE", "/api/v1/jobs", None, {}, 405),
    ("PUT", "/api/v1/jobs/1", None, {}, 405),
    ("GET", "/api/v1/jobs/1/cancel", None, {}, 405),
    ("GET", "/api/v1/nothing", None, {}, 404),
    ("GET", "/api/v2/jobs", None, {}, 404),
    ("GET", "/api/v1/jobs/1/logs/x", None, {}, 404),
    # queries
    ("GET", "/api/v1/jobs?state=sleeping", None, {}, 400),
    ("GET", "/api/v1/jobs?limit=0", None, {}, 400),
    ("GET", "/api/v1/jobs?limit=-5", None, {}, 400),
    ("GET", "/api/v1/jobs?limit=abc", None, {}, 400),
    ("GET", "/api/v1/jobs?limit=100000", None, {}, 400),
    ("GET", "/api/v1/jobs?limit=1&limit=2", None, {}, 400),
    ("GET", "/api/v1/jobs?all=maybe", None, {}, 400),
    ("GET", "/api/v1/jobs?color=red", None, {}, 400),
    ("GET", "/api/v1/jobs/1/logs?after=-1", None, {}, 400),
    ("GET", "/api/v1/jobs/1/logs?tail=1e3", None, {}, 400),
    ("GET", "/api/v1/jobs/1/logs?stream=stdin", None, {}, 400),
    ("GET", "/api/v1/jobs/1/logs?follow=yes", None, {}, 400),
    # bodies
    ("POST", "/api/v1/jobs", b"", J, 400),
    ("POST", "/api/v1/jobs", b"{", J, 400),
    ("POST", "/api/v1/jobs", b"\xff\xfe", J, 400),
    ("POST", "/api/v1/jobs", b"[]", J, 400),
    ("POST", "/api/v1/jobs", b'"x"', J, 400),
    ("POST", "/api/v1/jobs", b"null", J, 400),
    ("POST", "/api/v1/jobs", b'{"command": NaN}', J, 400),
    ("POST", "/api/v1/jobs", b'{"timeout": Infinity}', J, 400),
    ("POST", "/api/v1/jobs", b"[" * 100000 + b"]" * 100000, J, 400),
    ("POST", "/api/v1/jobs", _body({"command": "true"}), J, 400),
    ("POST", "/api/v1/jobs", _body({"command": [1, 2]}), J, 400),
    ("POST", "/api/v1/jobs", _body({"packages": [None]}), J, 400),
    ("POST", "/api/v1/jobs", _body({"env": ["A=1"]}), J, 400),
    ("POST", "/api/v1/jobs", _body({"env": {"A": 1}}), J, 400),
    ("POST", "/api/v1/jobs", _body({"interactive": "yes"}), J, 400),
    ("POST", "/api/v1/jobs", _body({"bind": ["/etc"]}), J, 400),
    ("POST", "/api/v1/jobs", _body({"pass_env": ["HOME"]}), J, 400),
    ("POST", "/api/v1/jobs", _body({"workspace": {"host_path": "/"}}), J, 400),
    ("POST", "/api/v1/jobs", _body({"workspace": "x"}), J, 400),
    ("POST", "/api/v1/jobs", _body({"\n": 1}), J, 400),
    ("POST", "/api/v1/jobs", b'{"packages": ["bash"], "command": ["\\ud800"]}', J, 400),
    ("POST", "/api/v1/jobs", b'{"packages": ["bash"], "command": ["true"], "command": 1}', J, 400),
    ("POST", "/api/v1/jobs", _body({"command": ["true"]}), {}, 415),
    ("POST", "/api/v1/jobs", _body({"command": ["true"]}), {"Content-Type": "text/plain"}, 415),
    ("POST", "/api/v1/jobs", b" " * (5 << 20), J, 413),
    ("POST", "/api/v1/jobs", b"{}", {**J, "Content-Length": "99999999999"}, 413),
    ("POST", "/api/v1/uploads", b"x", {"Content-Type": "application/json"}, 415),
    (
        "POST",
        "/api/v1/uploads",
        b"",
        {"Content-Type": "application/x-tar", "Content-Length": str(1 << 40)},
        413,
    ),
    ("POST", "/api/v1/session", _body({"token": "x"}), J, 400),  # unix: no web sessions
]

# Well-formed for the HTTP layer, refused by the service's checks (only the real daemon's test).
REFUSED: list[tuple[str, str, bytes | None, dict[str, str], int]] = [
    ("POST", "/api/v1/jobs", b'{"packages": ["bash"], "command": ["a\\u0000b"]}', J, 400),
    ("POST", "/api/v1/jobs", b'{"packages": ["bash"], "env": {"A\\u0000": "1"}}', J, 400),
    ("POST", "/api/v1/jobs", _body({"packages": ["bash"], "env": {"NIXCELL_X": "1"}}), J, 400),
    ("POST", "/api/v1/jobs", _body({"packages": ["bash"], "cwd": "../../etc"}), J, 400),
    ("POST", "/api/v1/jobs", _body({"packages": ["bash"], "policies": ["/etc/x.toml"]}), J, 400),
    ("POST", "/api/v1/jobs", _body({"packages": ["bash"], "credentials": ["nope"]}), J, 400),
    ("POST", "/api/v1/jobs", _body({"packages": ["bash"], "backend": "docker"}), J, 400),
    ("POST", "/api/v1/jobs", _body({"packages": ["bash"], "profiles": ["../x"]}), J, 400),
    ("POST", "/api/v1/jobs", _body({"packages": ["bash"], "timeout": "forever"}), J, 400),
    ("POST", "/api/v1/jobs", _body({"packages": ["bash"], "workspace": {"upload": "u-0"}}), J, 400),
    ("POST", "/api/v1/jobs", _body({"packages": []}), J, 400),
    ("GET", "/api/v1/jobs/424242/logs?after=9223372036854775807", None, {}, 404),
]

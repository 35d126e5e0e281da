"""The warm path's parts, without a sandbox: a cached plan gives bwrap exactly the normal path's
arguments and files, a damaged or foreign entry is not used, bwrap's info is read like json
reads it, and the subreaper call works without ``ctypes``."""

from __future__ import annotations

import json
import marshal
import os
import subprocess
import sys

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from tests.unit.test_plan import CLOSURE, HOST, USER_HOST, make

from nixcell import planview
from nixcell.plan import plan
from nixcell.sandbox.bwrapio import parse_info

SPECS = {
    "plain": {},
    "limits": {"limits": {"memory": "256M", "pids": 64, "cpus": 1.5, "timeout": "30s"}},
    "workdir": {"workdir": "/srv/proj"},
    "binds and hide": {
        "workdir": "/srv/proj",
        "mounts": [{"source": "/srv/ro", "target": "/ro"}, {"source": "/srv/rw", "target": "/rw",
                                                             "writable": True}],
        "hide": ["/srv/proj/.env"],
    },
    "disk": {"limits": {"disk": "64M"}},
    "env that looks like placeholders": {"env": {"A": "<fd:seccomp>", "B": "--", "C": "1000000"}},
    "profiles": {"hardening_profiles": ["debugger", "nested-sandbox"]},
    "cwd": {"cwd": "/tmp"},
}  # fmt: skip
HOSTS = {"root": HOST, "user": USER_HOST}
COMMANDS = [("true",), ("echo", "--", "<fd:seccomp>"), ("bash", "-c", "exit 3"), ("/bin/x",)]


def _fds(p) -> dict[str, int]:
    return {name: 10 + i for i, name in enumerate(p.fd_names())}


def _same(p, command) -> None:
    view = planview.load(planview.compile_plan(p), command)
    assert view is not None
    want = p.with_command(command)
    assert view.command == want.command
    assert view.bwrap_args(_fds(want)) == want.bwrap_args(_fds(want))
    data = [op for op in want.mounts if op.kind == "data"]
    files = [(f"data:{op.dest}", (op.data or "").encode()) for op in data]
    assert view.files() == files
    paths = [(f"path:{op.src}", op.src) for op in want.mounts if op.by_fd]
    assert view.paths() == list(dict.fromkeys(paths))  # an ordinary user's binds: by fd
    assert [n for n, _ in [*view.files(), *view.paths()]] + ["seccomp"] == want.fd_names()
    assert view.limits.needs_cgroup == want.limits.needs_cgroup
    for op_view, op in zip(view.mounts, want.mounts, strict=True):
        assert (op_view.kind, op_view.dest, op_view.src) == (op.kind, op.dest, op.src)
        assert view.host_source(op_view) == want.host_source(op)
    assert view.to_plan() == want


@pytest.mark.parametrize("host", list(HOSTS))
@pytest.mark.parametrize("case", list(SPECS))
def test_a_cached_plan_renders_the_normal_paths_arguments(case, host):
    p = plan(make(**SPECS[case]), CLOSURE, HOSTS[host])
    for command in COMMANDS:
        _same(p, command)


_text = st.text(st.characters(blacklist_categories=["Cs"], blacklist_characters="\0"), max_size=12)


@settings(max_examples=60, deadline=None)
@given(
    env=st.dictionaries(st.from_regex(r"[A-Z_][A-Z0-9_]{0,6}", fullmatch=True), _text, max_size=4),
    command=st.lists(_text.filter(bool), min_size=1, max_size=4),
)
def test_any_env_and_command_render_the_same(env, command):
    _same(plan(make(env=env), CLOSURE, HOST), tuple(command))


def _entry() -> bytes:
    return planview.compile_plan(plan(make(), CLOSURE, HOST))


DAMAGED = {
    "empty": b"",
    "truncated": _entry()[:40],
    "not marshal": b"\xff\xfe garbage",
    "json of it": json.dumps({"format": list(planview.FORMAT)}).encode(),
    "another layout": marshal.dumps({**marshal.loads(_entry()), "format": (0, 2)}),
    "another plan format": marshal.dumps({**marshal.loads(_entry()), "format": (1, 1)}),
    "a list": marshal.dumps([1, 2]),
    "fields missing": marshal.dumps({"format": planview.FORMAT, "plan": {}}),
}


@pytest.mark.parametrize("case", list(DAMAGED))
def test_a_damaged_or_foreign_entry_is_not_used(case):
    assert planview.load(DAMAGED[case], ("true",)) is None


INFO = {
    b'{\n    "child-pid": 4242\n}\n': 4242,
    b'{ "child-pid": 7, "cgroup-namespace": 4026531835 }': 7,
    b'{"cgroup-namespace": 1, "child-pid":99}': 99,
    b"": None,
    b"{}": None,
    b'{"child-pid": "12"}': None,
    b'{"child-pid": -3}': None,
    b'{"child-pid" 5}': None,
    b'{"child-pid": 99999999999}': None,
}


@pytest.mark.parametrize("data", list(INFO))
def test_bwrap_info_is_read_as_json_reads_it(data):
    assert parse_info(data) == INFO[data]
    try:
        value = json.loads(data)["child-pid"]
        expected = value if isinstance(value, int) and 0 <= value < 10**10 else None
    except (ValueError, KeyError, TypeError):
        expected = None
    assert parse_info(data) == expected


def test_the_subreaper_call_needs_no_ctypes_and_works():
    """An orphaned grandchild comes back to the process that called ``become_subreaper``."""
    script = """
import os, sys, time
from nixcell.sandbox.reap import become_subreaper
assert become_subreaper()
assert "ctypes" not in sys.modules
r, w = os.pipe()
if os.fork() == 0:  # the middle process: forks the grandchild, then exits at once
    if os.fork() == 0:
        time.sleep(0.3)
        os.write(w, str(os.getppid()).encode())
        os._exit(0)
    os._exit(0)
os.wait()
os.close(w)
print(os.read(r, 32).decode() == str(os.getpid()))
"""
    src = os.path.dirname(os.path.dirname(os.path.abspath(planview.__file__)))
    out = subprocess.run(
        [sys.executable, "-I", "-S", "-c", f"import sys; sys.path.insert(0, {src!r})\n{script}"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert out.stdout.strip() == "True", out.stderr


SUPPRESSED = [
    ((KeyError,), KeyError("k")),
    ((KeyError,), IndexError(1)),
    ((OSError,), FileNotFoundError(2, "x")),  # a subclass is suppressed
    ((ValueError, OSError), PermissionError(1, "x")),
    ((OSError,), KeyboardInterrupt()),
    ((BaseException,), SystemExit(3)),
    ((OSError,), None),
]


@pytest.mark.parametrize(("kinds", "error"), SUPPRESSED)
def test_quiet_suppress_is_contextlib_suppress(kinds, error):
    import contextlib

    from nixcell.quiet import suppress

    def outcome(manager) -> str:
        try:
            with manager(*kinds):
                if error is not None:
                    raise error
            return "finished"
        except BaseException as exc:
            return type(exc).__name__

    assert outcome(suppress) == outcome(contextlib.suppress)


def test_lazy_logger_is_the_named_logger(caplog):
    import logging

    from nixcell.quiet import LazyLogger

    with caplog.at_level(logging.INFO, logger="nixcell.test.lazy"):
        LazyLogger("nixcell.test.lazy").info("hello %s", "there")
    assert [r.getMessage() for r in caplog.records if r.name == "nixcell.test.lazy"] == [
        "hello there"
    ]

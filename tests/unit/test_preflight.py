"""preflight.lookup: the cell's view of a path, worked out from the plan's mounts on the host.

Binds are walked by fd without following host symlinks; a symlink found there is followed the
way the cell would (as a cell path, through the mounts again). Table over mount layouts.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from nixcell import preflight
from nixcell.errors import UsageError
from nixcell.plan import MountOp, Plan, PlanLimits
from nixcell.runner import CommandNotFoundError


def make_plan(host: Path, *, cwd: str = "/workspace", path: str = "/bin", cmd=("prog",)) -> Plan:
    mounts = (
        MountOp("ro-bind", "/bin", src=str(host / "bin")),
        MountOp("proc", "/proc"),
        MountOp("dev", "/dev"),
        MountOp("tmpfs", "/tmp"),
        MountOp("bind", "/workspace", src=str(host / "ws")),
        MountOp("ro-bind", "/workspace/inner/ro", src=str(host / "other")),
        MountOp("data", "/etc/passwd", data="x"),
        MountOp("symlink", "/usr/bin/env", src="/bin/prog"),
        MountOp("remount-ro", "/"),
    )
    return Plan(
        command=tuple(cmd),
        mounts=mounts,
        env={"PATH": path},
        cwd=cwd,
        limits=PlanLimits(),
        seccomp_profiles=(),
        closure=(),
        path_dirs=("/bin",),
    )


@pytest.fixture
def host(tmp_path: Path) -> Path:
    (tmp_path / "bin").mkdir()
    (tmp_path / "bin" / "prog").write_text("#!")
    (tmp_path / "ws" / "real").mkdir(parents=True)
    (tmp_path / "ws" / "file").write_text("")
    (tmp_path / "other" / "x").mkdir(parents=True)
    victim = tmp_path / "host-only"
    victim.mkdir()
    os.symlink(victim, tmp_path / "ws" / "to-host")  # exists on the host, not in the cell
    os.symlink("/etc", tmp_path / "ws" / "to-etc")  # the cell's /etc: exists (above a mount)
    os.symlink("/etc/passwd", tmp_path / "ws" / "to-passwd")
    os.symlink("real", tmp_path / "ws" / "relative")
    os.symlink("loop", tmp_path / "ws" / "loop")
    os.symlink("/proc/self", tmp_path / "ws" / "to-proc")
    return tmp_path


CASES = [
    ("/", "dir"),
    ("/workspace", "dir"),
    ("/workspace/real", "dir"),
    ("/workspace/file", "file"),
    ("/workspace/nope", "missing"),
    ("/workspace/file/x", "missing"),
    ("/workspace/inner", "dir"),  # bwrap creates it for the nested mount
    ("/workspace/inner/ro/x", "dir"),
    ("/workspace/to-host", "missing"),  # followed in the cell, where that path does not exist
    ("/workspace/to-etc", "dir"),
    ("/workspace/to-passwd", "file"),
    ("/workspace/relative", "dir"),
    ("/workspace/loop", "unknown"),
    ("/workspace/to-proc", "unknown"),
    ("/tmp", "dir"),
    ("/tmp/anything", "missing"),
    ("/etc", "dir"),
    ("/etc/shadow", "missing"),
    ("/usr/bin/env", "file"),
    ("/usr/bin/python3", "missing"),
    ("/proc/1/status", "unknown"),
    ("/nonexistent", "missing"),
    ("/workspace/../workspace/real", "dir"),
]


@pytest.mark.parametrize(("path", "kind"), CASES, ids=[p for p, _ in CASES])
def test_lookup(host, path, kind):
    assert preflight.lookup(make_plan(host), path) == kind


ERRORS = [
    ({"cwd": "/workspace/nope"}, UsageError, "does not exist"),
    ({"cwd": "/workspace/to-host"}, UsageError, "does not exist"),
    ({"cwd": "/workspace/file"}, UsageError, "not a directory"),
    ({"cmd": ("",)}, UsageError, "no command"),
    ({"cmd": ("missing",)}, CommandNotFoundError, "not found"),
    ({"path": "/tmp:/workspace"}, CommandNotFoundError, "PATH"),
    ({"path": ""}, CommandNotFoundError, "PATH"),  # empty: only the working directory
    ({"cmd": ("./prog",)}, CommandNotFoundError, "does not exist"),
    ({"cmd": ("/workspace/real",)}, CommandNotFoundError, "does not exist"),
]


@pytest.mark.parametrize(("fields", "error", "word"), ERRORS)
def test_check_refuses_with_one_line(host, fields, error, word):
    with pytest.raises(error) as info:
        preflight.check(make_plan(host, **fields))
    assert word in str(info.value) and "\n" not in str(info.value)


@pytest.mark.parametrize(
    "fields",
    [{}, {"cwd": "/workspace/relative"}, {"path": "relative:/bin"}, {"cmd": ("/usr/bin/env",)}],
)
def test_check_accepts(host, fields):
    preflight.check(make_plan(host, **fields))


@pytest.mark.parametrize(
    ("first", "missing"),
    [
        (b"#!/bin/prog\n", None),
        (b"#! /bin/prog -x\n", None),
        (b"#!/bin/nope\necho\n", "#!/bin/nope, which does not exist in the cell"),
        (b"#!/workspace/real\n", "#!/workspace/real, which does not exist"),  # a directory
        (b"#!/usr/bin/env prog\n", None),
        (b"#!/usr/bin/env nope\n", "#!/usr/bin/env nope, and 'nope' is not on the cell's PATH"),
        (b"#!/usr/bin/env -S nope -x\n", None),  # options: env's business
        (b"#!/usr/bin/env A=1 nope\n", None),
        (b"#!relative\n", None),  # the kernel's business
        (b"\x7fELF\x02\x01\x01", None),
        (b"", None),
        (b"#!/bin/nope" + b" " * 300, "#!/bin/nope,"),  # longer than what is read
    ],
)
def test_a_scripts_interpreter_must_exist(host, first, missing):
    script = host / "ws" / "script"
    script.write_bytes(first)
    plan = make_plan(host, cmd=("./script",))
    if missing is None:
        preflight.check(plan)
        return
    with pytest.raises(CommandNotFoundError, match="starts with " + missing.replace("(", r"\(")):
        preflight.check(plan)


def test_a_fifo_or_a_host_symlink_as_command_is_never_read(host):
    os.mkfifo(host / "ws" / "fifo")  # opened for reading it would block: never opened
    preflight.check(make_plan(host, cmd=("./fifo",)))
    (host / "host-only" / "s").write_text("#!/bin/nope\n")
    os.symlink(host / "host-only" / "s", host / "ws" / "leak")  # a host path the cell lacks
    with pytest.raises(CommandNotFoundError, match="does not exist in the cell"):
        preflight.check(make_plan(host, cmd=("./leak",)))

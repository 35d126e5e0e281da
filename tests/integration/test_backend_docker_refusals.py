"""What the docker backend (and gVisor, sharing its layout) must refuse rather than change:
bytes that are not UTF-8 (their JSON specs would turn them into U+FFFD), and mounts at the
places Docker keeps for itself (its init, its sysfs). bwrap passes such bytes exactly.
Real dockerd (``dockerd.py``), real runsc, real cells."""

from __future__ import annotations

import subprocess

import pytest
from tests.conftest import NIXCELL

from nixcell.sandbox import backends

RUN = [NIXCELL, "run", "-p", "coreutils"]
NOT_UTF8 = [
    ["--", "printf", "%s\\n", "\udcfe\udcff"],  # argv: the bytes fe ff
    ["-e", "X=a\udcffb", "--", "true"],
    ["--ro-bind", "/dev/null:/tmp/x\udcfe", "--", "true"],
]


@pytest.fixture(scope="module")
def warm(offline_set):
    """The plan resolved once: the refusals below are the only line a run prints."""
    subprocess.run([*RUN, "--", "true"], check=True, capture_output=True)


def _backend(name: str, dockerd: str | None) -> None:
    found = backends.availability(name)
    if not found.ok:
        print(f"{name}: skipped: {found.detail}")
        pytest.skip(found.detail)


@pytest.mark.parametrize("backend", ["docker", "gvisor"])
@pytest.mark.parametrize("args", NOT_UTF8, ids=["argv", "env", "mount"])
def test_bytes_that_are_not_utf8_are_refused(dockerd, warm, backend, args):
    _backend(backend, dockerd)
    proc = subprocess.run([*RUN, "--backend", backend, *args], capture_output=True, timeout=120)
    assert proc.returncode != 0 and proc.stdout == b"", proc  # never another command
    assert proc.stderr.count(b"\n") == 1 and b"not UTF-8" in proc.stderr, proc.stderr


def test_bwrap_passes_such_bytes_exactly(offline_set):
    argv = [*RUN, "--backend", "bwrap", "-e", "X=a\udcffb", "--", "printenv", "X"]
    env_run = subprocess.run(argv, capture_output=True, timeout=120)
    assert (env_run.returncode, env_run.stdout) == (0, b"a\xffb\n"), env_run.stderr
    argv = [*RUN, "--backend", "bwrap", "--", "printf", "%s", "\udcfe\udcff"]
    arg_run = subprocess.run(argv, capture_output=True, timeout=120)
    assert (arg_run.returncode, arg_run.stdout) == (0, b"\xfe\xff"), arg_run.stderr


RESERVED = [
    ["--ro-bind", "{f}:/sbin/docker-init"],  # runc would run this file as PID 1
    ["--hide", "/sbin"],
    ["--ro-bind", "{f}:/sys/x"],
    ["--ro-bind", "{f}:/sys"],
]


@pytest.mark.parametrize("flags", RESERVED, ids=lambda f: f[1].split(":")[-1])
def test_dockers_own_places_are_refused(dockerd, warm, tmp_path, flags):
    (tmp_path / "f").write_text("#!/bin/sh\necho mine\n")
    flags = [f.format(f=tmp_path / "f") for f in flags]
    proc = subprocess.run(
        [*RUN, "--backend", "docker", *flags, "--", "true"], capture_output=True, timeout=120
    )
    assert proc.returncode != 0 and proc.stderr.count(b"\n") == 1, proc.stderr
    assert b"cannot enforce a mount at" in proc.stderr and b"runc" not in proc.stderr, proc.stderr


@pytest.mark.parametrize("backend", ["docker", "gvisor"])
def test_the_images_files_are_the_plans_to_cover(dockerd, offline_set, tmp_path, backend):
    """/pause and /.dockerenv are only files of the image, /sbin/x beside the init: mounts
    there are what the plan asked (and gVisor has none of Docker's places: all of RESERVED's
    binds are the plan's there)."""
    _backend(backend, dockerd)
    (tmp_path / "f").write_text("mine\n")
    dests = ["/pause", "/.dockerenv", "/sbin/x"]
    if backend == "gvisor":
        dests += ["/sbin/docker-init", "/sys/x"]
    flags = [a for i, d in enumerate(dests) for a in ("--ro-bind", f"{tmp_path / 'f'}:{d}")]
    proc = subprocess.run(
        [*RUN, "--backend", backend, *flags, "--", "cat", *dests], capture_output=True, timeout=120
    )
    assert (proc.returncode, proc.stdout) == (0, b"mine\n" * len(dests)), proc.stderr

"""bwrap: ``nixcell run --backend bwrap`` against bare ``bwrap`` with exactly the plan's
arguments (the same closure binds, /proc covers, tmpfs, data files, namespaces and seccomp
program), started as an unprivileged uid as nixcell starts a root-run cell."""

from __future__ import annotations

import os
import shutil
import sys

from backends.common import (
    NIXCELL,
    PACKAGES,
    ROOT,
    Skip,
    check,
    cmdline,
    descendants,
    running_cell_mib,
)

__all__ = ["Skip", "bare", "memory", "nixcell", "setup", "teardown"]


def setup() -> dict[str, object]:
    if shutil.which("bwrap") is None:
        raise Skip("bwrap is not installed")
    sys.path.insert(0, str(ROOT / "src"))
    return {"bwrap": shutil.which("bwrap")}


def nixcell(state: dict[str, object], argv: list[str]):
    cmd = [NIXCELL, "run", "--backend", "bwrap", *PACKAGES, "--", *argv]
    return lambda: check(cmd)


def bare(state: dict[str, object], argv: list[str]):
    from nixcell.runner import prepare, seccomp_program
    from nixcell.sandbox.bwrap import prepare_fds
    from nixcell.spec import make_spec

    plan, _ = prepare(make_spec(command=argv, packages=["coreutils", "python3"]))
    program = seccomp_program(plan.seccomp_profiles)
    who: dict[str, object] = {}
    if os.geteuid() == 0:
        from nixcell.sandbox.identity import subordinate_range

        uid = subordinate_range().base + 4096  # a slot far from those of live cells
        who = {"user": uid, "group": uid, "extra_groups": [], "cwd": "/"}

    def run() -> None:
        named, fds = prepare_fds(plan, program)
        try:
            check([str(state["bwrap"]), *plan.bwrap_args(named)], pass_fds=fds, **who)
        finally:
            for fd in fds:
                os.close(fd)

    return run


def memory(state: dict[str, object]) -> float | None:
    """PSS of nixcell's process, bwrap's and the cell's own (``sleep``)."""
    argv = [NIXCELL, "run", "--backend", "bwrap", *PACKAGES, "--", "sleep", "30"]

    def ready(pid: int) -> bool:
        return any(cmdline(p) == "sleep 30" for p in descendants(pid))

    return running_cell_mib(argv, ready, descendants)


def teardown(state: dict[str, object]) -> None:
    pass

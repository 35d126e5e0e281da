"""gVisor: ``nixcell run --backend gvisor`` against bare ``runsc --network=none do`` running the
same program of the same closure (the plan's PATH). ``runsc do`` overlays the host's root rather
than binding only the closure, so the bare run does a little less mount work than the cell."""

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
    sys.path.insert(0, str(ROOT / "src"))
    from nixcell.sandbox import backends

    found = backends.availability("gvisor")
    if not found.ok:
        raise Skip(found.detail)
    runsc = shutil.which("runsc")
    if runsc is None:
        raise Skip("runsc is not on PATH")
    from nixcell.runner import prepare
    from nixcell.spec import make_spec

    plan, _ = prepare(make_spec(command=["true"], packages=["coreutils", "python3"]))
    flags = [] if os.geteuid() == 0 else ["--rootless"]
    return {"argv": [runsc, *flags, "--network=none", "do"], "path": plan.env["PATH"]}


def nixcell(state: dict[str, object], argv: list[str]):
    cmd = [NIXCELL, "run", "--backend", "gvisor", *PACKAGES, "--", *argv]
    return lambda: check(cmd)


def bare(state: dict[str, object], argv: list[str]):
    cmd = [*state["argv"], *argv]  # type: ignore[misc]
    env = {**os.environ, "PATH": f"{state['path']}:{os.environ.get('PATH', '')}"}
    return lambda: check(cmd, env=env, cwd="/")  # pipes: runsc writes a file from offset 0


def memory(state: dict[str, object]) -> float | None:
    """PSS of nixcell's process and every runsc process under it (sentry, gofer)."""
    argv = [NIXCELL, "run", "--backend", "gvisor", *PACKAGES, "--", "sleep", "30"]

    def ready(pid: int) -> bool:
        return any("runsc" in cmdline(p) for p in descendants(pid))

    return running_cell_mib(argv, ready, descendants)


def teardown(state: dict[str, object]) -> None:
    pass

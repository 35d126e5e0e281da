"""An ordinary user's binds reach bwrap as O_PATH fds opened without following links: bwrap
given a path resolves it itself, after nixcell's checks, and a cell sharing the directory (a
concurrent run of the same project) can swap a symlink in between (it read ~/.ssh that way).
Real files: each way a source can be swapped after planning, before and after the open."""

from __future__ import annotations

import os

import pytest
from tests.unit.test_plan import CLOSURE, HOST, USER_HOST, make

from nixcell import planview
from nixcell.errors import SandboxError
from nixcell.plan import plan
from nixcell.sandbox.bwrap import prepare_fds


def _spec(tmp_path):
    (tmp_path / "proj").mkdir()
    (tmp_path / "proj" / ".envrc").write_text("mine\n")
    (tmp_path / "secret").write_text("key\n")
    mounts = [{"source": str(tmp_path / "proj" / ".envrc"), "target": "/e"}]
    return make(workdir=str(tmp_path / "proj"), mounts=mounts)


def test_user_binds_render_as_fds_root_ones_through_the_stage(tmp_path):
    spec = _spec(tmp_path)
    user = plan(spec, CLOSURE, USER_HOST)
    binds = [op for op in user.mounts if op.src and op.src.startswith(str(tmp_path))]
    assert binds and all(op.by_fd for op in binds)
    args = user.bwrap_args()
    assert "--ro-bind-fd" in args and "--bind-fd" in args
    assert not any(a.startswith(str(tmp_path)) and args[i - 1] in ("--bind", "--ro-bind")
                   for i, a in enumerate(args))
    view = planview.load(planview.compile_plan(user), ("true",))
    assert view is not None and [s for _, s in view.paths()] == [op.src for op in binds]
    root = plan(spec, CLOSURE, HOST)
    assert not any(op.by_fd for op in root.mounts)  # staged: idmap.open_nofollow


# how a cell swaps the source after the plan was made: what bwrap must not bind
SWAPS = {
    "file-to-link": lambda p, secret: (os.unlink(p), os.symlink(secret, p)),
    "dir-to-link": lambda p, secret: (
        os.rename(p, p + ".x"),
        os.symlink(os.path.dirname(secret), p),
    ),
    "parent-to-link": lambda p, secret: (
        os.rename(os.path.dirname(p), os.path.dirname(p) + ".x"),
        os.symlink(os.path.dirname(secret), os.path.dirname(p)),
    ),
}


@pytest.mark.parametrize("swap", sorted(SWAPS))
def test_a_source_swapped_for_a_link_is_never_followed(tmp_path, swap):
    p = plan(_spec(tmp_path), CLOSURE, USER_HOST)
    source = str(tmp_path / "proj" / ("" if swap == "dir-to-link" else ".envrc")).rstrip("/")
    SWAPS[swap](source, str(tmp_path / "secret"))
    with pytest.raises(SandboxError, match="symlink"):
        prepare_fds(p, b"")


def test_a_swap_after_the_open_changes_nothing_bound(tmp_path):
    p = plan(_spec(tmp_path), CLOSURE, USER_HOST)
    named, fds = prepare_fds(p, b"")
    try:
        envrc = str(tmp_path / "proj" / ".envrc")
        os.unlink(envrc)
        os.symlink(str(tmp_path / "secret"), envrc)
        fd = named[f"path:{envrc}"]
        assert os.readlink(f"/proc/self/fd/{fd}").startswith(envrc)  # the original, unlinked
        assert os.fstat(fd).st_ino != os.stat(tmp_path / "secret").st_ino
    finally:
        for fd in fds:
            os.close(fd)

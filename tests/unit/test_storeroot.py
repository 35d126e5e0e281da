"""storeroot: a store symlink read on the host is resolved inside the Nix root, never out of it.

The class: a link in the root's store (absolute, relative, with ``..``, looping) must not lead
host-side code (the resolver listing an env's bin/, finding a tool) to a file outside the root
- the machine's /nix/store least of all.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nixcell.errors import UsageError
from nixcell.nix.storeroot import check_root, logical_real, physical, store_args


def _root(tmp_path: Path) -> str:
    root = tmp_path / "root"
    (root / "nix/store").mkdir(parents=True)
    return str(root)


def test_an_absolute_store_link_is_followed_inside_the_root(tmp_path) -> None:
    root = _root(tmp_path)
    os.makedirs(f"{root}/nix/store/bbb-pkg/bin")
    os.makedirs(f"{root}/nix/store/aaa-env")
    os.symlink("/nix/store/bbb-pkg/bin", f"{root}/nix/store/aaa-env/bin")
    assert logical_real(root, "/nix/store/aaa-env/bin") == "/nix/store/bbb-pkg/bin"
    assert physical(root, "/nix/store/bbb-pkg/bin") == f"{root}/nix/store/bbb-pkg/bin"


@pytest.mark.parametrize(
    "target,expected",
    [
        ("bbb-pkg", "/nix/store/bbb-pkg"),
        ("../bbb-pkg", "/nix/bbb-pkg"),  # (relative to the link's directory, as the kernel)
        ("/etc/passwd", "/etc/passwd"),  # (the root's /etc: physical() keeps it below the root)
        ("/../../../../etc", "/etc"),
        ("../../../../../../x", "/x"),
        ("./.././store/bbb-pkg/./", "/nix/store/bbb-pkg"),
    ],
)
def test_links_cannot_climb_out_of_the_root(tmp_path, target, expected) -> None:
    root = _root(tmp_path)
    os.symlink(target, f"{root}/nix/store/aaa-link")
    assert logical_real(root, "/nix/store/aaa-link") == expected
    assert physical(root, expected).startswith(root + "/")


def test_a_link_loop_is_an_error_not_a_hang(tmp_path) -> None:
    root = _root(tmp_path)
    os.symlink("/nix/store/b", f"{root}/nix/store/a")
    os.symlink("/nix/store/a", f"{root}/nix/store/b")
    with pytest.raises(OSError):
        logical_real(root, "/nix/store/a/bin")


def test_without_a_root_nothing_changes() -> None:
    assert store_args(None) == () and physical(None, "/nix/store/x") == "/nix/store/x"
    assert logical_real(None, "/") == os.path.realpath("/")


_SEGMENT = st.sampled_from(["..", ".", "nix", "store", "aaa-x", "bbb-y", "etc", ""])


@settings(max_examples=200, deadline=None)
@given(
    links=st.lists(
        st.tuples(
            st.sampled_from(["aaa-x", "bbb-y", "ccc-z"]),
            st.booleans(),
            st.lists(_SEGMENT, max_size=6),
        ),
        max_size=3,
    ),
    walk=st.lists(_SEGMENT, max_size=6),
)
def test_whatever_the_links_the_answer_stays_below_the_root(links, walk) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        root = f"{tmp}/root"
        os.makedirs(f"{root}/nix/store")
        for name, absolute, parts in links:
            target = ("/" if absolute else "") + "/".join(parts)
            if target and not os.path.lexists(f"{root}/nix/store/{name}"):
                os.symlink(target, f"{root}/nix/store/{name}")
        path = "/nix/store/" + "/".join(walk)
        try:
            got = logical_real(root, path)
        except OSError:
            return  # a loop: refused
        assert got.startswith("/") and os.path.normpath(got) == got
        assert os.path.realpath(physical(root, got)).startswith(os.path.realpath(root))
        assert ".." not in got.split("/")


@pytest.mark.parametrize(
    "value,why",
    [
        ("", "absolute"),
        ("nix-root", "absolute"),
        ("/tmp/a/../b", "plain"),
        ("/tmp/./b", "plain"),
        ("/tmp//b", "plain"),
        ("/", "plain"),
        ("/nix", "plain"),
        ("/tmp/x\t", "absolute"),
        ("/tmp/x\0", "absolute"),
    ],
)
def test_a_bad_root_value_is_refused(value, why) -> None:
    with pytest.raises(UsageError, match=why):
        check_root(value)


def test_a_root_others_can_write_or_reached_by_a_link_is_refused(tmp_path) -> None:
    open_dir = tmp_path / "open"
    open_dir.mkdir()
    os.chmod(open_dir, 0o775)
    with pytest.raises(UsageError, match="writable by group or others"):
        check_root(str(open_dir))
    (tmp_path / "link").symlink_to(tmp_path)
    with pytest.raises(UsageError, match="symbolic link"):
        check_root(str(tmp_path / "link" / "x"))
    assert not (tmp_path / "x").exists()  # nothing was made through the link
    (tmp_path / "file").write_text("")
    with pytest.raises(UsageError, match="not a directory"):
        check_root(str(tmp_path / "file"))


def test_a_missing_root_is_made_private_to_writes(tmp_path) -> None:
    os.chmod(tmp_path, 0o755)
    closed = [p for p in tmp_path.parents if not os.stat(p).st_mode & 1]
    if os.geteuid() == 0 and closed:  # a root-run cell's uid could not reach it
        with pytest.raises(UsageError, match="not searchable by others"):
            check_root(str(tmp_path / "new"))
        return
    made = check_root(str(tmp_path / "new"))
    assert made == str(tmp_path / "new") and os.stat(made).st_mode & 0o777 == 0o755

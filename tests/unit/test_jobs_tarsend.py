"""``submit --upload DIR``'s tar stream: links stay links (never followed out of DIR), special
files are left out, names are relative, and a bad DIR is one UsageError line."""

from __future__ import annotations

import io
import os
import tarfile

import pytest

from nixcell.errors import UsageError
from nixcell.jobs.tarsend import tar_chunks


def _members(directory) -> tuple[dict[str, tarfile.TarInfo], dict[str, bytes]]:
    data = b"".join(tar_chunks(str(directory)))
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:") as tar:
        found = {m.name: m for m in tar.getmembers()}
        content = {n: tar.extractfile(m).read() for n, m in found.items() if m.isreg()}  # type: ignore[union-attr]
    return found, content


def test_links_stay_links_and_specials_are_left_out(tmp_path):
    top = tmp_path / "ws"
    (top / "sub").mkdir(parents=True)
    (top / "a.txt").write_bytes(b"hello")
    (top / "sub" / "b").write_bytes(b"x" * 200_000)
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret").write_text("do not send")
    os.symlink("/etc/passwd", top / "to-passwd")
    os.symlink(str(outside), top / "to-outside")  # a dir link: not walked into
    os.symlink("../../outside/secret", top / "sub" / "rel")
    os.mkfifo(top / "fifo")
    weird = "new\nline \x1b[31m"
    (top / weird).write_text("w")
    found, content = _members(top)
    assert set(found) == {"a.txt", "sub", "sub/b", "to-passwd", "to-outside", "sub/rel", weird}
    assert content["a.txt"] == b"hello" and len(content["sub/b"]) == 200_000
    assert found["to-passwd"].issym() and found["to-passwd"].linkname == "/etc/passwd"
    assert found["to-outside"].issym() and found["sub/rel"].issym()
    assert all(m.uid == 0 and m.uname == "" for m in found.values())
    assert b"do not send" not in b"".join(tar_chunks(str(top)))


@pytest.mark.parametrize("kind", ["missing", "file", "link"])
def test_a_bad_upload_dir_is_one_line(tmp_path, kind):
    path = tmp_path / "x"
    if kind == "file":
        path.write_text("")
    elif kind == "link":
        (tmp_path / "d").mkdir()
        os.symlink(tmp_path / "d", path)
    with pytest.raises(UsageError) as err:
        b"".join(tar_chunks(str(path)))
    assert "\n" not in str(err.value) and "--upload" in str(err.value)

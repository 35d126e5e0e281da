"""Files the user names are read without hanging or filling memory: each kind of non-file."""

from __future__ import annotations

import os
import socket

import pytest

from nixcell.errors import CredentialError, UsageError
from nixcell.userfile import MAX_INPUT, read_input, read_text


def fifo(tmp_path):
    path = tmp_path / "fifo"
    os.mkfifo(path)
    return path


def sock(tmp_path):
    path = tmp_path / "sock"
    s = socket.socket(socket.AF_UNIX)
    s.bind(str(path))
    return path


@pytest.mark.parametrize(
    ("make", "needle"),
    [
        (lambda t: "/dev/zero", "is a device, not a regular file"),
        (fifo, "is a FIFO, not a regular file"),
        (sock, "No such device or address"),  # a socket cannot even be opened
        (lambda t: t, "Is a directory"),
        (lambda t: t / "missing", "No such file or directory"),
        (lambda t: t / "missing" / "x", "No such file or directory"),
    ],
)
def test_what_is_not_a_regular_file_is_one_line(tmp_path, make, needle):
    path = make(tmp_path)
    with pytest.raises(UsageError) as err:
        read_input(path, "policy file")
    message = str(err.value)
    assert message.startswith(f"policy file {path}: ") and needle in message
    assert "\n" not in message


@pytest.mark.parametrize(("size", "ok"), [(0, True), (MAX_INPUT, True), (MAX_INPUT + 1, False)])
def test_size_limit(tmp_path, size, ok):
    path = tmp_path / "f"
    path.write_bytes(b"a" * size)
    if ok:
        assert len(read_input(path, "policy file")) == size
    else:
        with pytest.raises(UsageError, match=r"over the 1\.0 MiB limit"):
            read_input(path, "policy file")


def test_error_class_and_limit_are_the_callers(tmp_path):
    path = tmp_path / "token"
    path.write_bytes(b"x" * 100)
    with pytest.raises(CredentialError, match="over the 99 bytes limit"):
        read_input(path, "credential 't': cannot read", error=CredentialError, limit=99)


def test_text_names_the_line_of_a_bad_byte(tmp_path):
    path = tmp_path / "p.toml"
    path.write_bytes(b"a = 1\nb = 2\nc = '\xff'\n")
    with pytest.raises(UsageError, match=r"p.toml:3: not valid UTF-8$"):
        read_text(path, "policy file")
    path.write_text("ok = 'é'\n")
    assert read_text(path, "policy file") == "ok = 'é'\n"

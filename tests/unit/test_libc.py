"""libc.py: libc calls through ``_ctypes`` return what the kernel returns, errors as OSError."""

from __future__ import annotations

import errno
import os

import pytest

from nixcell.sandbox import libc

_GETPID = {"x86_64": 39, "aarch64": 172}


@pytest.mark.parametrize(
    ("name", "args", "code"),
    [
        ("close", (-1,), errno.EBADF),
        ("setns", (-1, 0), errno.EBADF),
        ("mount", (None, b"/nonexistent/nixcell-libc", None, 0, None), errno.ENOENT),
        ("syscall", (-1,), errno.ENOSYS),
    ],
)
def test_a_failed_call_raises_its_errno(name, args, code):
    with pytest.raises(OSError) as caught:
        libc.call(name, *args, returns_long=name == "syscall")
    assert caught.value.errno == code and caught.value.strerror == os.strerror(code)


def test_results_come_back_whole():
    number = _GETPID.get(os.uname().machine)
    if number is None:
        pytest.skip("no getpid number for this machine here")
    assert libc.call("syscall", number, returns_long=True) == os.getpid()
    fd = os.open("/dev/null", os.O_RDONLY)
    copy = libc.call("dup", fd)  # an int result
    try:
        assert os.path.samestat(os.fstat(copy), os.fstat(fd))
    finally:
        os.close(copy)
        os.close(fd)

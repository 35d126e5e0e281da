"""The program behind strace_cell.txt (see capture_trace.py): failures of every kind."""

import contextlib
import os
import socket
import threading


def miss(path: str | bytes, *mode: str) -> None:
    with contextlib.suppress(OSError), open(path, *mode):
        pass


threads = [
    threading.Thread(target=miss, args=(f"/home/cell/.config/thread{i}.json",)) for i in range(3)
]
for t in threads:
    t.start()
for t in threads:
    t.join()
for _ in range(3):
    miss("/home/cell/.config/foo.json")
miss("/etc/nixcell-test", "w")
hostile = b"/tmp/a\nb\x1b[31m\xff\xe2\x80\xae<x>"
os.mkdir(hostile)
os.chdir(hostile)
for name in (b"rel", b"sub/x"):
    miss(name)
with contextlib.suppress(OSError):
    os.mkdir(b"q/r")
with contextlib.suppress(OSError), socket.socket() as s:
    s.connect(("127.0.0.1", 1))
if os.fork() == 0:
    miss("/nix/store/00000000000000000000000000000000-not-in-closure/x")
    os._exit(0)
os.wait()
with contextlib.suppress(OSError):
    os.rename("/tmp/x-missing", "/etc/y")

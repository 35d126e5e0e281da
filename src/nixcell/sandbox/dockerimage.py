"""The one image every Docker cell runs: ``FROM scratch`` plus a 129-byte ``/pause``.

Built locally once per daemon through the classic builder (no registry, no BuildKit) and found
again by its tag, which is a digest of its contents. Everything a cell sees besides ``/pause``
is mounted (the closure, the plan's mounts). ``/pause`` is the network holder's program (the
container whose network namespace holds the proxy's listener): a static x86-64 ELF that loops on
``pause(2)``, written here byte by byte, so no host binary and no closure program is needed.
"""

from __future__ import annotations

import json
import platform
import struct

from nixcell.hashing import digest
from nixcell.sandbox.dockerapi import Client, DockerError, clean

REPO = "nixcell/cell"
LABEL = "nixcell.image"
_BASE = 0x400000


def pause_program() -> bytes:
    """ELF64 with one PT_LOAD segment: ``1: mov eax, 34 (pause); syscall; jmp 1b``."""
    code = bytes.fromhex("b8220000000f05ebf7")
    size = 64 + 56 + len(code)
    ident = b"\x7fELF" + bytes([2, 1, 1, 0]) + bytes(8)
    header = ident + struct.pack(
        "<HHIQQQIHHHHHH", 2, 0x3E, 1, _BASE + 120, 64, 0, 0, 64, 56, 1, 0, 0, 0
    )
    segment = struct.pack("<IIQQQQQQ", 1, 5, 0, _BASE, _BASE, size, size, 0x1000)
    return header + segment + code


DOCKERFILE = 'FROM scratch\nCOPY pause /pause\nLABEL nixcell.image="1"\n'


def tag() -> str:
    return f"{REPO}:{digest(DOCKERFILE + pause_program().hex())[:16]}"


def _context() -> bytes:
    import io
    import tarfile

    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, data, mode in (
            ("Dockerfile", DOCKERFILE.encode(), 0o644),
            ("pause", pause_program(), 0o755),
        ):
            info = tarfile.TarInfo(name)
            info.size, info.mode = len(data), mode
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def supported() -> str | None:
    """Why this machine cannot run the image's ``/pause``, or None."""
    machine = platform.machine()
    return None if machine in ("x86_64", "amd64") else f"no pause program for {machine} yet"


_ready: set[tuple[str, str]] = set()


def ensure(client: Client) -> str:
    """The image's tag, built on this daemon if it is not there yet."""
    name = tag()
    if (client.path, name) in _ready:
        return name
    try:
        client.call("GET", f"/images/{name}/json")
    except DockerError as exc:
        if exc.status != 404:
            raise
        _build(client, name)
        client.call("GET", f"/images/{name}/json")  # built (its answer streams: check)
    _ready.add((client.path, name))
    return name


def _build(client: Client, name: str) -> None:
    query = {"t": name, "version": "1", "rm": "1", "forcerm": "1", "q": "1"}
    answer = client.call(
        "POST", "/build", query=query, raw=_context(), content_type="application/x-tar",
        timeout=120,
    )  # fmt: skip
    text = answer.decode("utf-8", "replace") if isinstance(answer, bytes) else json.dumps(answer)
    for line in text.splitlines():
        try:
            event = json.loads(line)
        except ValueError:
            continue
        if isinstance(event, dict) and event.get("error"):
            why = clean(" ".join(str(event["error"]).split()))[:300]
            raise DockerError(f"building the cell image failed: {why}")

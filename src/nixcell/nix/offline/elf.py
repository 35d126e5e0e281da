"""Just enough ELF reading to classify staged files and check their loader paths.

Staging must know which files are dynamic executables (they get a new interpreter), which are
shared objects (they get a RUNPATH) and which are static (left alone); the tests must prove no
interpreter or RUNPATH points outside ``/nix/store``. Parsing the headers ourselves avoids one
``patchelf --print-*`` process per file, which matters for trees with thousands of files.
"""

from __future__ import annotations

import mmap
import os
import struct
from dataclasses import dataclass
from pathlib import Path

_MAGIC = b"\x7fELF"
_PT_LOAD, _PT_DYNAMIC, _PT_INTERP = 1, 2, 3
_DT_NULL, _DT_NEEDED, _DT_STRTAB, _DT_RPATH, _DT_RUNPATH = 0, 1, 5, 15, 29


@dataclass(frozen=True)
class ElfInfo:
    interpreter: str | None
    dynamic: bool
    needed: tuple[str, ...] = ()
    runpath: str | None = None
    rpath: str | None = None

    @property
    def search_path(self) -> str | None:
        """The library search path the loader will use (RUNPATH wins over RPATH)."""
        return self.runpath if self.runpath is not None else self.rpath


def is_elf(path: Path) -> bool:
    try:
        with path.open("rb") as f:
            return f.read(4) == _MAGIC
    except OSError:
        return False


def read_elf(path: Path) -> ElfInfo | None:
    """Parse a 64- or 32-bit little/big-endian ELF; None if ``path`` is not an ELF file."""
    with path.open("rb") as f:
        if f.read(4) != _MAGIC or os.fstat(f.fileno()).st_size < 64:
            return None
        with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as data:
            return _parse(data)


def _parse(data: mmap.mmap) -> ElfInfo:
    is64 = data[4] == 2
    end = "<" if data[5] == 1 else ">"
    if is64:
        phoff, phentsize, phnum = (
            struct.unpack_from(end + "Q", data, 0x20)[0],
            *struct.unpack_from(end + "HH", data, 0x36),
        )
        ph_fmt, dyn_fmt = end + "IIQQQQQQ", end + "qQ"
    else:
        phoff, phentsize, phnum = (
            struct.unpack_from(end + "I", data, 0x1C)[0],
            *struct.unpack_from(end + "HH", data, 0x2A),
        )
        ph_fmt, dyn_fmt = end + "IIIIIIII", end + "iI"

    loads: list[tuple[int, int, int]] = []  # (vaddr, offset, filesz)
    interp: str | None = None
    dyn_range: tuple[int, int] | None = None
    for i in range(phnum):
        raw = struct.unpack_from(ph_fmt, data, phoff + i * phentsize)
        if is64:
            p_type, _flags, p_offset, p_vaddr, _paddr, p_filesz = raw[:6]
        else:
            p_type, p_offset, p_vaddr, _paddr, p_filesz = raw[:5]
        if p_type == _PT_LOAD:
            loads.append((p_vaddr, p_offset, p_filesz))
        elif p_type == _PT_INTERP:
            interp = data[p_offset : p_offset + p_filesz].split(b"\0", 1)[0].decode()
        elif p_type == _PT_DYNAMIC:
            dyn_range = (p_offset, p_filesz)
    if dyn_range is None:
        return ElfInfo(interpreter=interp, dynamic=False)

    entries: list[tuple[int, int]] = []
    size = struct.calcsize(dyn_fmt)
    off, length = dyn_range
    for pos in range(off, off + length - size + 1, size):
        tag, val = struct.unpack_from(dyn_fmt, data, pos)
        if tag == _DT_NULL:
            break
        entries.append((tag, val))

    strtab_vaddr = next((v for t, v in entries if t == _DT_STRTAB), None)
    strtab_off = _vaddr_to_offset(loads, strtab_vaddr) if strtab_vaddr is not None else None

    def string(index: int) -> str:
        if strtab_off is None:
            return ""
        start = strtab_off + index
        return data[start : data.find(b"\0", start)].decode(errors="replace")

    return ElfInfo(
        interpreter=interp,
        dynamic=True,
        needed=tuple(string(v) for t, v in entries if t == _DT_NEEDED),
        runpath=next((string(v) for t, v in entries if t == _DT_RUNPATH), None),
        rpath=next((string(v) for t, v in entries if t == _DT_RPATH), None),
    )


def interp_offset(path: Path) -> int | None:
    """File offset of the PT_INTERP string (to overwrite it in place), or None."""
    with path.open("rb") as f:
        head = f.read(64)
        if head[:4] != _MAGIC:
            return None
        is64 = head[4] == 2
        end = "<" if head[5] == 1 else ">"
        if is64:
            phoff = struct.unpack_from(end + "Q", head, 0x20)[0]
            phentsize, phnum = struct.unpack_from(end + "HH", head, 0x36)
        else:
            phoff = struct.unpack_from(end + "I", head, 0x1C)[0]
            phentsize, phnum = struct.unpack_from(end + "HH", head, 0x2A)
        f.seek(phoff)
        table = f.read(phentsize * phnum)
    for i in range(phnum):
        p_type = struct.unpack_from(end + "I", table, i * phentsize)[0]
        if p_type == _PT_INTERP:
            fmt = end + ("Q" if is64 else "I")
            return int(struct.unpack_from(fmt, table, i * phentsize + (8 if is64 else 4))[0])
    return None


def _vaddr_to_offset(loads: list[tuple[int, int, int]], vaddr: int) -> int | None:
    for seg_vaddr, seg_off, seg_size in loads:
        if seg_vaddr <= vaddr < seg_vaddr + seg_size:
            return seg_off + (vaddr - seg_vaddr)
    return None

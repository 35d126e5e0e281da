"""The cell's seccomp program, cached on disk (sealed) per profile set: warm runs skip libseccomp.

Imports only ``os`` and the seal on a hit, so the CLI's warm path uses it too.
"""

from __future__ import annotations

import os

from nixcell.errors import NixcellError
from nixcell.quiet import suppress


def seccomp_program(profiles: tuple[str, ...]) -> bytes:
    """The BPF program, cached on disk per profile set so warm runs skip libseccomp.

    The cache entry is trusted only when nixcell sealed it (sealed.py): only a program that
    passed bpfcheck.py is ever sealed, so a verified seal means those very bytes passed (checking
    them again on every warm run cost 0.2 ms). Anything else is logged and rebuilt, never fatal.
    """
    from nixcell import __version__, sealed
    from nixcell.hashing import digest

    # The source file's stamp keys the cache without importing the module on warm runs; the
    # machine and the libseccomp file key it too (an old libseccomp builds a different filter).
    stamp = os.stat(os.path.join(os.path.dirname(__file__), "seccomp.py"))
    machine = os.uname().machine
    lib = "-"
    for libdir in (f"/usr/lib/{machine}-linux-gnu", "/usr/lib64", "/usr/lib", "/lib64"):
        with suppress(OSError):
            lib_stat = os.stat(f"{libdir}/libseccomp.so.2")
            lib = f"{libdir}:{lib_stat.st_mtime_ns}:{lib_stat.st_size}"
            break
    key = digest(
        f"{__version__}|{stamp.st_mtime_ns}|{stamp.st_size}|{machine}|{lib}|{','.join(profiles)}"
    )[:24]
    cached = sealed.cache_file("seccomp", f"{key}.bpf")
    program = sealed.load("seccomp", cached) if cached is not None else None
    if program is not None:
        return program
    from nixcell import bpfcheck
    from nixcell.sandbox import seccomp

    program = seccomp.build_filter(profiles)
    why = bpfcheck.problem(program)
    if why is not None:  # never run, nor cache, a filter we would refuse to load
        raise NixcellError(f"the seccomp filter built here is not sane: {why}")
    if cached is not None:
        sealed.store("seccomp", cached, program)
    return program

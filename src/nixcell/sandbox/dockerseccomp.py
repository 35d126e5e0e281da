"""The cell's seccomp filter (``seccomp.py``'s rules) as a Docker seccomp profile (JSON).

Docker's own default profile is a different, weaker-in-places policy (it lets AF_VSOCK, AF_ALG
and AF_PACKET sockets through, for one): a cell runs under exactly nixcell's rules or not at
all. The translation is one to one: the same default action (allow), each rule's chains as
entries (an entry's ``args`` are ANDed; several entries for one syscall are ORed, as libseccomp
chains are), the same errno, the same compat architectures. runc compiles it with the host's
libseccomp, the same library ``seccomp.py`` uses; runc *skips* a syscall name that library does
not know, so a rule naming one is refused here instead of being silently dropped.
"""

from __future__ import annotations

import json
import os
from functools import lru_cache

from nixcell.errors import LimitUnavailableError

_OPS = {7: "SCMP_CMP_MASKED_EQ", 4: "SCMP_CMP_EQ"}
_ARCHES = {
    "x86_64": ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"],
    "aarch64": ["SCMP_ARCH_AARCH64", "SCMP_ARCH_ARM"],
}


def _known(name: str) -> bool:
    from nixcell.sandbox import seccomp  # (its pseudo numbers, < -1, are names it knows)

    sc = seccomp._pyseccomp()
    return bool(sc.resolve_syscall(sc.Arch.NATIVE, name) != seccomp._NR_SCMP_ERROR)


@lru_cache(maxsize=16)
def profile(profiles: tuple[str, ...]) -> str:
    """The Docker profile JSON for the plan's hardening profiles (LimitUnavailableError when a
    rule cannot be expressed exactly); cached on disk, sealed, like ``seccache.py``'s programs
    (a warm run skips loading libseccomp to check the names)."""
    from nixcell import sealed

    cached = sealed.cache_file("seccomp", f"docker-{_key(profiles)}.json")
    payload = sealed.load("seccomp", cached) if cached is not None else None
    if payload is not None:
        return payload.decode()
    text = _translate(profiles)
    if cached is not None:
        sealed.store("seccomp", cached, text.encode())
    return text


def _key(profiles: tuple[str, ...]) -> str:
    from nixcell import __version__
    from nixcell.hashing import digest

    here = os.path.dirname(__file__)
    stamps = [os.stat(os.path.join(here, f)) for f in ("seccomp.py", "dockerseccomp.py")]
    parts = [__version__, os.uname().machine, ",".join(profiles)]
    parts += [f"{st.st_mtime_ns}:{st.st_size}" for st in stamps]
    machine = os.uname().machine
    for libdir in (f"/usr/lib/{machine}-linux-gnu", "/usr/lib64", "/usr/lib", "/lib64"):
        try:
            lib = os.stat(f"{libdir}/libseccomp.so.2")
        except OSError:
            continue
        parts.append(f"{libdir}:{lib.st_mtime_ns}:{lib.st_size}")  # another libseccomp: again
        break
    return digest("|".join(parts))[:24]


def _translate(profiles: tuple[str, ...]) -> str:
    from nixcell.sandbox import seccomp

    machine = os.uname().machine
    if machine not in _ARCHES:
        raise LimitUnavailableError(f"the cell's seccomp filter on {machine} (no Docker arch map)")
    entries: list[dict[str, object]] = []
    for rule in seccomp.rules(seccomp.check_profiles(profiles)):
        if not _known(rule.syscall):
            if rule.syscall in seccomp._COMPAT_ONLY:
                continue  # a 32-bit-only name: the compat arches' own spelling is known
            raise LimitUnavailableError(
                f"the seccomp rule on {rule.syscall} (runc's libseccomp does not know it and "
                "would drop it)"
            )
        for chain in rule.when:
            entry: dict[str, object] = {
                "names": [rule.syscall],
                "action": "SCMP_ACT_ERRNO",
                "errnoRet": rule.errno,
            }
            if chain:
                entry["args"] = [
                    {"index": i, "op": _OPS[op], "value": a, "valueTwo": b} for i, op, a, b in chain
                ]
            entries.append(entry)
    body = {
        "defaultAction": "SCMP_ACT_ALLOW",
        "architectures": _ARCHES[machine],
        "syscalls": entries,
    }
    return json.dumps(body, separators=(",", ":"))


def refusal(profiles: tuple[str, ...]) -> str | None:
    """Why the filter cannot be given to Docker exactly, or None."""
    try:
        profile(tuple(profiles))
    except LimitUnavailableError as exc:
        return exc.message
    return None

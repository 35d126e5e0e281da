"""A structural check of a cached seccomp BPF program (struct sock_filter[]), before bwrap.

The seal (sealed.py) says nixcell wrote the program; this says the bytes are a program of the
shape libseccomp emits, so a damaged entry is rebuilt instead of breaking every later run (the
kernel would refuse it inside bwrap, with bwrap's message). Checked: whole instructions, a length
the kernel accepts, the architecture loaded first, only classic-BPF classes and jumps that land
inside the program, a ``ret`` last, and at least one ``ret`` that denies (an allow-all program is
not a filter nixcell builds).
"""

from __future__ import annotations

import struct

MAX_INSNS = 4096  # BPF_MAXINSNS
_INSN = struct.Struct("<HBBI")
_LD_W_ABS = 0x20
_ARCH_OFFSET = 4  # offsetof(struct seccomp_data, arch)
_CLASS_LD, _CLASS_LDX, _CLASS_ALU, _CLASS_JMP, _CLASS_RET, _CLASS_MISC = 0, 1, 4, 5, 6, 7
_CLASSES = {_CLASS_LD, _CLASS_LDX, 2, 3, _CLASS_ALU, _CLASS_JMP, _CLASS_RET, _CLASS_MISC}
_JA = 0x00
_RET_ACTION = 0xFFFF0000
_RET_ALLOW = 0x7FFF0000
_RET_LOG = 0x7FFC0000


def problem(program: bytes) -> str | None:
    """Why ``program`` is not a sane seccomp filter, or None when it is."""
    if len(program) % _INSN.size:
        return f"{len(program)} bytes is not a whole number of instructions"
    count = len(program) // _INSN.size
    if not 1 <= count <= MAX_INSNS:
        return f"{count} instructions (the kernel takes 1 to {MAX_INSNS})"
    insns = list(_INSN.iter_unpack(program))
    if insns[0][0] != _LD_W_ABS or insns[0][3] != _ARCH_OFFSET:
        return "it does not check the architecture first"
    denies = False
    for pc, (code, jt, jf, k) in enumerate(insns):
        cls = code & 0x07
        if cls not in _CLASSES:
            return f"instruction {pc} has an unknown class"
        if cls == _CLASS_JMP:
            targets = [k] if code & 0xF0 == _JA else [jt, jf]
            if any(pc + 1 + t >= count for t in targets):
                return f"instruction {pc} jumps past the end"
        if cls == _CLASS_RET and k & _RET_ACTION not in (_RET_ALLOW, _RET_LOG):
            denies = True
    if insns[-1][0] & 0x07 != _CLASS_RET:
        return "it does not end with a return"
    if not denies:
        return "it never denies anything"
    return None

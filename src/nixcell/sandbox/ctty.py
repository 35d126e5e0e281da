"""The controlling-terminal helper: a tiny static program that runs first inside a PTY cell.

Job control needs the cell's command to lead its own session with the cell's pty slave as its
controlling terminal. bwrap's ``--new-session`` calls ``setsid()`` in the process that becomes
the pid namespace's init, before it forks the command, and nothing in bwrap ever calls
``TIOCSCTTY``: the command would have no controlling terminal ("no job control in this shell",
``/dev/tty`` gives ENXIO). Only a process inside the cell, after that fork, can take the
terminal, and a cell's closure may hold no program that does (util-linux's ``setsid --ctty``,
busybox's ``setsid -c``). So nixcell hands the cell this helper through a memfd
(``--ro-bind-data``): ``setsid(); ioctl(0, TIOCSCTTY, 0); execve(argv[1], argv + 2, envp)``.
It needs no libc, so it runs in any closure; the host side resolves the command's path on the
cell's PATH (``preflight.program_path``), the helper does no search of its own.

It exits 125 (with one line on stderr) when it cannot take the terminal and 126 when the
command cannot be executed. The machine code below is the assembly in ``SOURCE`` (GNU as,
``as --64``; ``tests/unit/test_pty_parts.py`` assembles it again where binutils exist and
compares); other machines get no PTY (``program`` returns None and the runner says so).
"""

from __future__ import annotations

import os
import struct

CELL_PATH = "/dev/.nixcell-tty"  # inside bwrap's own /dev tmpfs: no user mount can be there

SOURCE = r"""
    .globl _start
    .text
_start:
    mov    $112, %eax            # setsid()
    syscall
    test   %rax, %rax
    js     setup_failed
    xor    %edi, %edi            # ioctl(0, TIOCSCTTY, 0)
    mov    $0x540e, %esi
    xor    %edx, %edx
    mov    $16, %eax
    syscall
    test   %rax, %rax
    js     setup_failed
    mov    (%rsp), %rcx          # argc
    cmp    $3, %rcx
    jb     setup_failed
    mov    16(%rsp), %rdi        # execve(argv[1], &argv[2], envp)
    lea    24(%rsp), %rsi
    lea    16(%rsp,%rcx,8), %rdx
    mov    $59, %eax
    syscall
    mov    $126, %ebx
    lea    exec_msg(%rip), %rsi
    mov    $exec_len, %edx
    jmp    fail
setup_failed:
    mov    $125, %ebx
    lea    setup_msg(%rip), %rsi
    mov    $setup_len, %edx
fail:
    mov    $2, %edi              # write(2, msg, len)
    mov    $1, %eax
    syscall
    mov    %ebx, %edi            # exit(code)
    mov    $60, %eax
    syscall
setup_msg: .ascii "nixcell: cannot make the terminal the cell's controlling terminal\n"
    .set setup_len, . - setup_msg
exec_msg: .ascii "nixcell: cannot execute the command\n"
    .set exec_len, . - exec_msg
"""

# ``objcopy -O binary -j .text`` of SOURCE: position-independent (the messages are reached
# rip-relative), so it runs wherever the ELF below loads it.
_X86_64 = bytes.fromhex(
    "b8700000000f054885c0784831ffbe0e54000031d2b8100000000f054885c078"
    "33488b0c244883f9037229488b7c2410488d742418488d54cc10b83b0000000f"
    "05bb7e000000488d356f000000ba24000000eb11bb7d000000488d351a000000"
    "ba42000000bf02000000b8010000000f0589dfb83c0000000f056e697863656c"
    "6c3a2063616e6e6f74206d616b6520746865207465726d696e616c2074686520"
    "63656c6c277320636f6e74726f6c6c696e67207465726d696e616c0a6e697863"
    "656c6c3a2063616e6e6f7420657865637574652074686520636f6d6d616e640a"
)
_CODE = {"x86_64": (_X86_64, 62)}  # machine -> (code, e_machine)
_BASE = 0x400000
_EHDR, _PHDR = "<16sHHIQQQIHHHHHH", "<IIQQQQQQ"


def elf(code: bytes, e_machine: int) -> bytes:
    """A static ELF64 executable: the headers and ``code`` in one read+execute segment."""
    head = struct.calcsize(_EHDR) + struct.calcsize(_PHDR)
    size = head + len(code)
    ident = b"\x7fELF" + bytes([2, 1, 1, 0]) + bytes(8)  # 64-bit, little-endian, SysV
    ehdr = struct.pack(
        _EHDR, ident, 2, e_machine, 1, _BASE + head, struct.calcsize(_EHDR), 0, 0,
        struct.calcsize(_EHDR), struct.calcsize(_PHDR), 1, 0, 0, 0,
    )  # fmt: skip
    phdr = struct.pack(_PHDR, 1, 5, 0, _BASE, _BASE, size, size, 0x1000)  # PT_LOAD, R+X
    return ehdr + phdr + code


def program(machine: str | None = None) -> bytes | None:
    """The helper for this machine (``uname -m``), or None where nixcell has none."""
    found = _CODE.get(machine or os.uname().machine)
    return elf(*found) if found is not None else None


def command(path: str, argv: tuple[str, ...]) -> list[str]:
    """The cell's argv through the helper: ``path`` is the program, ``argv`` its own argv."""
    return [CELL_PATH, path, *argv]

"""Shell builtins given as the command: run through the closure's shell.

Apart from ``plan.py`` so that the CLI's warm path (``cli/fast.py``) can swap the command of a
cached plan without importing ``dataclasses``.
"""

from __future__ import annotations

# Builtins of bash/sh that people pass as the command (`nixcell run -p bash -- echo hi`).
SHELL_BUILTINS = frozenset(
    [
        "echo",
        "printf",
        "test",
        "[",
        "true",
        "false",
        "pwd",
        "read",
        "cd",
        "exit",
        "kill",
        "type",
        "command",
        "exec",
        "export",
        "set",
        "unset",
        "ulimit",
        "umask",
        "wait",
        "times",
        "trap",
        "eval",
        "source",
        ".",
        ":",
        "alias",
        "hash",
        "help",
        "let",
        "local",
        "shift",
        "getopts",
        "declare",
        "typeset",
        "readonly",
        "jobs",
    ]
)


def command_for(command: tuple[str, ...], plan) -> tuple[str, ...]:
    """Run a shell builtin through the closure's shell when no program of that name exists.

    ``plan``: anything with the ``programs`` and ``shell`` of a Plan."""
    if not command:
        return command
    name = command[0]
    if "/" in name or name in plan.programs or name not in SHELL_BUILTINS or plan.shell is None:
        return command
    return (plan.shell, "-c", '"$@"', name, *command)

"""``nixcell hook direnv``: the shell code a project's ``.envrc`` evaluates.

direnv evaluates ``.envrc`` in bash and keeps the exported variables; it cannot keep shell
functions, so ``cell`` and ``cellrun`` are the scripts in ``.nixcell/bin`` put on PATH. The hook
enters no sandbox: it only says where the project is (``NIXCELL_ACTIVE``, ``NIXCELL_ROOT``,
``NIXCELL_LEVEL``, ``NIXCELL_OS``, and nixcage's ``NIXCAGE_*`` names for a ``nixcage.toml``
project), asks direnv to reload when the config changes, and prints one status line.

It never breaks direnv: outside a project, or with a config that does not load, it prints a
message (``log_status``/``log_error``) and exits 0. Every value is quoted with ``shlex.quote``
after control characters in messages are escaped: a project path holding spaces, quotes,
``$(...)`` or newlines becomes data, never code (a hypothesis test evals the output in real
bash). ``.nixcell/bin`` is put on PATH only when it holds exactly nixcell's two scripts, owned
by the user, writable by no one else: anything else there would shadow host commands
(``git``, ``ls``) for every shell in the project. Missing scripts are written (a project made by
nixcage, or a clone whose ``.nixcell/bin`` was not committed).
"""

from __future__ import annotations

import os
import shlex
import sys

from nixcell.errors import NixcellError
from nixcell.project import files


def _call(func: str, *args: str) -> str:
    """``func ARGS`` when direnv's stdlib defines it, a plain-shell equivalent otherwise."""
    quoted = " ".join(shlex.quote(a) for a in args)
    if func in ("log_status", "log_error"):
        fallback = f"printf '%s\\n' {quoted} >&2"
    elif func == "PATH_add":
        fallback = f'export PATH={quoted}:"$PATH"'
    else:
        fallback = ":"
    return f"if type {func} >/dev/null 2>&1; then {func} {quoted}; else {fallback}; fi"


def _one_line(text: str) -> str:
    from nixcell.cli.entry import one_line

    return one_line(text)


def _platform() -> str:
    return "macos" if sys.platform == "darwin" else "linux"


def bin_problem(root: str, nested: bool = False) -> str | None:
    """Why ``.nixcell/bin`` must not go on PATH (None: it holds exactly our scripts, which are
    written first when missing: the ones naming their project when ``nested``)."""
    me = os.getuid()
    rfd = files.open_root(root)
    try:
        sfd = files.open_subdir(rfd, files.STATE_DIR, files.STATE_DIR, create=True)
        assert sfd is not None
        try:
            files.write_scripts(sfd, files.Outcome(), only_missing=True, nested=nested)
            bfd = files.open_subdir(sfd, files.BIN_DIR, "", create=False)
            assert bfd is not None
            try:
                for fd, shown in ((sfd, files.STATE_DIR), (bfd, f"{files.STATE_DIR}/bin")):
                    st = os.fstat(fd)
                    if st.st_uid not in (me, 0) or st.st_mode & 0o022:
                        return f"{shown} is writable by others or not yours"
                extra = sorted(set(os.listdir(bfd)) - set(files.SCRIPTS))
                if extra:
                    return f"{files.STATE_DIR}/bin also holds {', '.join(extra)}"
                for name, text in files.SCRIPTS.items():
                    st = os.stat(name, dir_fd=bfd, follow_symlinks=False)
                    ours = (text.encode(), files.SCRIPTS_NESTED[name].encode())
                    if (
                        files.read_file(bfd, name) not in ours
                        or st.st_uid not in (me, 0)
                        or st.st_mode & 0o022
                    ):
                        return f"{files.STATE_DIR}/bin/{name} is not nixcell's script"
            finally:
                os.close(bfd)
        finally:
            os.close(sfd)
    finally:
        os.close(rfd)
    return None


def exports(root: str, level: str, kind: str) -> dict[str, str]:
    """The variables the hook exports for a project."""
    names = ["NIXCELL"] + (["NIXCAGE"] if kind == "nixcage" else [])
    out: dict[str, str] = {}
    for prefix in names:
        out[f"{prefix}_ACTIVE"] = "1"
        out[f"{prefix}_ROOT"] = root
        out[f"{prefix}_LEVEL"] = level
        out[f"{prefix}_OS"] = _platform()
    return out


def project_hook(root: str, config: str, level: str, kind: str, bin_issue: str | None) -> str:
    """The hook's shell code for a project that loaded."""
    lines = [f"export {k}={shlex.quote(v)}" for k, v in exports(root, level, kind).items()]
    lines.append(_call("watch_file", config))
    bindir = os.path.join(root, files.STATE_DIR, files.BIN_DIR)
    status = (
        f"nixcell: project {root} ({os.path.basename(config)}, level {level}): "
        "`cell` opens its shell, `cellrun CMD` runs CMD in its cell"
    )
    if bin_issue is None and ":" in bindir:  # PATH would split it: "/x/a" and "b/.nixcell/bin"
        bin_issue = "its path holds ':', which would split PATH into other directories"
    if bin_issue is None:
        lines.append(_call("PATH_add", bindir))
    else:
        status = f"nixcell: project {root} (level {level}): `cell`/`cellrun` not on PATH: "
        lines.append(_call("log_error", _one_line(status + bin_issue)))
        return "\n".join(lines) + "\n"
    lines.append(_call("log_status", _one_line(status)))
    return "\n".join(lines) + "\n"


def message_hook(text: str, *, error: bool = False) -> str:
    """Shell code that only prints ``text`` (outside a project, or a config that fails)."""
    return _call("log_error" if error else "log_status", _one_line(text)) + "\n"


def hook(cwd: str, explicit: str | None = None) -> str:
    """The whole hook for ``cwd``; never raises a NixcellError (it becomes a message)."""
    from nixcell.project import discover

    try:
        found = discover.find(cwd, explicit)
    except NixcellError as exc:
        return message_hook(f"nixcell: {exc.message}", error=True)
    if found is None:
        return message_hook(
            "nixcell: no nixcell.toml (or nixcage.toml) here or above: `nixcell init` makes one"
        )
    try:
        from nixcell.project.load import load

        project = load(found)
        level = str(project.level)
    except NixcellError as exc:
        # nothing exported for a config that does not load; direnv reloads once it is fixed
        code = _call("watch_file", found.path) + "\n"
        return code + message_hook(f"nixcell: {exc.message}", error=True)
    try:
        issue = bin_problem(found.root, nested=explicit is not None)
    except (NixcellError, OSError) as exc:
        issue = getattr(exc, "message", None) or str(exc)
    return project_hook(found.root, found.path, level, found.kind, issue)

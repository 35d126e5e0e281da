"""Tiny compiled launchers: set env vars / prepend arguments relative to the package's own root.

Some host programs carry compiled-in host paths we cannot patch (git's exec-path, libmagic's
database) and some entry points are shell scripts (npm, egrep). A shell-script wrapper would
drag a shell into every closure and needs the output path at staging time; this launcher finds
its package root from ``/proc/self/exe`` (``<root>/bin/<name>``) and needs only libc.
Values starting with ``@`` are relative to that root.
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path

from nixcell.errors import NixError

_TEMPLATE = r"""
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static const char *const ENV_NAMES[] = {%(env_names)s NULL};
static const char *const ENV_VALUES[] = {%(env_values)s NULL};
static const char *const ARGS[] = {%(args)s NULL};

static char root[PATH_MAX];

static char *expand(const char *s) {
    if (s[0] != '@') return strdup(s);
    size_t n = strlen(root) + strlen(s);
    char *out = malloc(n);
    if (!out) { perror("nixcell-wrapper"); exit(127); }
    snprintf(out, n, "%%s%%s", root, s + 1);
    return out;
}

int main(int argc, char **argv) {
    ssize_t n = readlink("/proc/self/exe", root, sizeof root - 1);
    if (n < 0) { perror("nixcell-wrapper: readlink /proc/self/exe"); return 127; }
    root[n] = '\0';
    for (int i = 0; i < 2; i++) {           /* <root>/bin/<name> -> <root> */
        char *slash = strrchr(root, '/');
        if (!slash) { fprintf(stderr, "nixcell-wrapper: odd path %%s\n", root); return 127; }
        *slash = '\0';
    }
    for (int i = 0; ENV_NAMES[i]; i++) setenv(ENV_NAMES[i], expand(ENV_VALUES[i]), 1);
    int nargs = 0;
    while (ARGS[nargs]) nargs++;
    char **new_argv = calloc((size_t)(nargs + argc + 1), sizeof *new_argv);
    if (!new_argv) { perror("nixcell-wrapper"); return 127; }
    for (int i = 0; i < nargs; i++) new_argv[i] = expand(ARGS[i]);
    for (int i = 1; i < argc; i++) new_argv[nargs + i - 1] = argv[i];
    execv(new_argv[0], new_argv);
    fprintf(stderr, "nixcell-wrapper: cannot exec %%s: ", new_argv[0]);
    perror(NULL);
    return 127;
}
"""


def _c_string(s: str) -> str:
    if any(ord(c) < 0x20 for c in s):
        raise ValueError(f"control character in wrapper string {s!r}")
    return '"' + s.replace("\\", "\\\\").replace('"', '\\"') + '"'


def wrapper_source(argv: Sequence[str], env: Mapping[str, str] | None = None) -> str:
    """C source of a launcher that runs ``argv`` (+ the caller's args) with ``env`` set."""
    if not argv:
        raise ValueError("wrapper needs a program")
    env = env or {}
    return _TEMPLATE % {
        "env_names": "".join(_c_string(k) + ", " for k in env),
        "env_values": "".join(_c_string(v) + ", " for v in env.values()),
        "args": "".join(_c_string(a) + ", " for a in argv),
    }


def compile_wrapper(dest: Path, argv: Sequence[str], env: Mapping[str, str] | None = None) -> None:
    """Compile a launcher to ``dest`` with the host C compiler (``cc``)."""
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        raise NixError(
            "no C compiler (cc) to build the offline set's launchers", detail="apt install gcc"
        )
    src = dest.with_name(dest.name + ".wrapper.c")
    src.write_text(wrapper_source(argv, env))
    try:
        proc = subprocess.run(
            [cc, "-O2", "-s", "-Wall", "-o", str(dest), str(src)],
            capture_output=True,
            text=True,
        )
    finally:
        src.unlink()
    if proc.returncode != 0:
        raise NixError(f"compiling the launcher {dest.name} failed", detail=proc.stderr)

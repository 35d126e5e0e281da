"""The drivers of pooled cells: an interpreter started ahead of time, waiting for one call's code.

A pooled cell runs ``python3 DRIVER CODE_FD EVENT_FD FILE``, ``node -r DRIVER FILE CODE_FD
EVENT_FD`` or ``bash -c DRIVER``.
The driver writes ``r`` on EVENT_FD once the interpreter is up, reads the code from CODE_FD to
EOF, writes it to FILE (the one-shot cell's ``/workspace/.nixcell/main.*``), writes ``s``, closes
both fds (the user's code never sees them) and then runs FILE the way ``<interpreter> FILE``
would: same argv, ``sys.path[0]``/``__main__`` (python); node itself runs it as its main module
once the preloaded driver returns; bash ``exec``s the one-shot cell's very argv (~1 ms).
The drivers import only what the interpreter has loaded at start anyway. What still differs
from a one-shot cell is listed in docs/mcp.md (the process's own command line, driver frames
below the user's in a stack walk).
"""

from __future__ import annotations

DRIVER_DIR = "/run/nixcell"
DRIVER_FILES = {"python": f"{DRIVER_DIR}/pool.py", "node": f"{DRIVER_DIR}/pool.js"}

PYTHON_DRIVER = r"""
import os, sys  # loaded at start-up anyway


def _serve():
    code_fd, event_fd, path = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
    # Warm the compiler's code (its pages are not touched by a start-up that loads only .pyc
    # files): the call's own compile() then takes microseconds, not a millisecond. No effect.
    compile("def f(a, *b, **c):\n    return [x for x in (a, *b) if x] or f'{c!r}'\n", "-", "exec")
    import gc  # (built in)

    gc.freeze()  # the start-up's objects: no collection walks them again, at exit neither
    os.write(event_fd, b"r")
    chunks = []
    while chunk := os.read(code_fd, 1 << 20):
        chunks.append(chunk)
    os.close(code_fd)
    source = b"".join(chunks)
    del chunks
    directory = os.path.dirname(path)  # made by bwrap, as for a one-shot cell
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    view = memoryview(source)
    while view:
        view = view[os.write(fd, view):]
    os.close(fd)
    main = type(sys)("__main__")
    loader = sys.modules["_frozen_importlib_external"].SourceFileLoader("__main__", path)
    main.__dict__.update(
        __loader__=loader, __spec__=None, __annotations__={}, __builtins__=sys.modules["builtins"],
        __file__=path, __cached__=None,
    )
    driver = sys.modules["__main__"]
    sys.modules["__main__"] = main
    sys.argv[:] = [path]
    sys.path[0] = directory
    os.write(event_fd, b"s")
    os.close(event_fd)
    try:
        code = compile(source, path, "exec", dont_inherit=True)
        del source  # (`python3 FILE` holds no copy of the file either)
        exec(code, main.__dict__)
    except SystemExit:
        raise
    except BaseException as exc:
        tb = exc.__traceback__.tb_next if exc.__traceback__ is not None else None
        sys.excepthook(type(exc), exc.with_traceback(tb), tb)  # as `python3 FILE` prints it
        if isinstance(exc, KeyboardInterrupt):  # exit as killed by SIGINT, as python does
            import signal

            signal.signal(signal.SIGINT, signal.SIG_DFL)
            os.kill(os.getpid(), signal.SIGINT)
        raise SystemExit(1) from None


_serve()
"""

# Preloaded (`node -r DRIVER FILE CODE_FD EVENT_FD`): it returns once FILE is written, and node
# then runs FILE as its genuine main module (its own stack frames, require.main, execArgv).
NODE_DRIVER = r"""'use strict';
const fs = require('fs');
const [codeFd, eventFd] = process.argv.splice(2, 2).map(Number);
process.execArgv.splice(0, 2); // -r DRIVER: a fork() of the user's must not run it
fs.writeSync(eventFd, 'r');
const code = fs.readFileSync(codeFd);
fs.closeSync(codeFd);
fs.writeFileSync(process.argv[1], code, { mode: 0o600, flag: 'wx' });
fs.writeSync(eventFd, 's');
fs.closeSync(eventFd);
"""

# $1 the code pipe (only its EOF counts), $2 event fd, $3 the file, $4 a memfd holding the code
# (bash reads a pipe byte by byte, a regular file in blocks), then the one-shot cell's argv.
# exec keeps SHLVL; the umask is put back.
BASH_DRIVER = r"""printf r >&"$2"
read -r -u "$1" __nixcell_code
IFS= read -r -d '' -u "$4" __nixcell_code
while read -r __nixcell_k __nixcell_v; do [ "$__nixcell_k" = Umask: ] && break
done </proc/self/status
umask 077  # the file is made as bwrap makes a one-shot cell's: 0600
set -o noclobber
printf '%s' "$__nixcell_code" > "$3" || exit 126
set +o noclobber
umask "$__nixcell_v"
unset __nixcell_code __nixcell_k __nixcell_v
printf s >&"$2"
eval "exec $1<&- $2>&- $4<&-"
shift 4
exec "$@"
"""

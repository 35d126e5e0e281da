"""Interpreters of a nixcell session agent: drivers, processes, output streams.

Shipped into the session cell next to ``agent.py`` (stdlib only, Python ≥ 3.9, nothing of
nixcell). Each interpreter runs in its own process group with fd 0 = /dev/null (bash: the
agent's trigger pipe, while user code gets /dev/null), fd 1/2 = pipes only the agent reads, and
two protocol pipes above fd 40: framed code in, event lines (``ready``, ``started <id>``,
``done <id> <status>``) out.
"""

from __future__ import annotations

import codecs
import contextlib
import fcntl
import os
import signal
import subprocess

OUTPUT_CAP = 1 << 20  # bytes kept per stream and call; the rest is read and counted
READY_TIMEOUT = 30.0
HIGH_FD = 40  # the interpreter's protocol fds sit above the numbers users pick (3-9)
HERE = os.path.dirname(os.path.abspath(__file__))

# Interactive bash (-i) so that SIGINT aborts the running command list, as Ctrl-C does, and the
# shell survives with its state; PROMPT_COMMAND reports the end of a call with its status. The
# code is read NUL-terminated from its own fd and eval'd with stdin = /dev/null and the protocol
# fds closed, so no command the user runs can see them.
BASH_DRIVER = r"""
set +H +o history; unset HISTFILE MAILCHECK PROMPT_COMMAND; PS1= PS2= PS0= PS4='+ '
shopt -s expand_aliases
__nixcell_run() {
  IFS= read -r -u @IN@ __nixcell_id || exit 0
  IFS= read -r -d '' -u @IN@ __nixcell_code
  printf 'started %s\n' "$__nixcell_id" >&@EV@
  { eval "$__nixcell_code"; } </dev/null @IN@<&- @EV@>&-
}
__nixcell_prompt() {
  local s=$?
  if [ -n "${__nixcell_id-}" ]; then printf 'done %s %s\n' "$__nixcell_id" "$s" >&@EV@; fi
  __nixcell_id= __nixcell_code=
}
declare -r PROMPT_COMMAND=__nixcell_prompt
readonly -f __nixcell_run __nixcell_prompt
printf 'ready\n' >&@EV@
"""

# vm.runInThisContext: `var`, functions and globalThis persist (top-level let/const persist too
# but cannot be declared again). A completion value that is a promise is awaited; code using
# top-level await runs wrapped in an async function (its declarations are then local).
NODE_DRIVER = r"""
'use strict';
const vm = require('vm'), fs = require('fs'), net = require('net'), util = require('util');
const codeFd = Number(process.argv[1]), evFd = Number(process.argv[2]);
process.argv = [process.argv[0]];
const emit = (line) => fs.writeSync(evFd, line + '\n');
const loader = vm.constants && vm.constants.USE_MAIN_CONTEXT_DEFAULT_LOADER;
let current = null, calls = 0, busy = false, pending = [];
const interrupted = (e) => e && e.code === 'ERR_SCRIPT_EXECUTION_INTERRUPTED';
function report(e) {
  let text = e instanceof Error && e.stack ? e.stack : 'Uncaught ' + util.inspect(e);
  text = text.split('\n').filter((l) => !/^\s+at .*(node:|\[eval\])/.test(l)).join('\n');
  process.stderr.write(text + '\n');
}
// Errors of async work nobody awaits are printed (stderr of the call running then), never fatal.
process.on('uncaughtException', report);
process.on('unhandledRejection', report);
process.on('SIGINT', () => { if (current && current.interrupt) current.interrupt(); });
function compile(code, filename) {
  const opts = loader ? { filename, importModuleDynamically: loader } : { filename };
  try { return new vm.Script(code, opts); } catch (e) {
    if (!(e instanceof SyntaxError) || !/await/.test(e.message)) throw e;
    return new vm.Script('(async () => {\n' + code + '\n})()', { ...opts, lineOffset: -1 });
  }
}
const flush = (s) => new Promise((resolve) => s.write('', resolve));
async function run(id, code) {
  emit('started ' + id);
  const call = current = { interrupt: null };
  let status = 0;
  try {
    const script = compile(code, '<call ' + ++calls + '>');
    const result = script.runInThisContext({ breakOnSigint: true });
    if (result && typeof result.then === 'function') {
      await new Promise((resolve, reject) => {
        call.interrupt = () => reject(Object.assign(new Error('interrupted by SIGINT'),
          { code: 'ERR_SCRIPT_EXECUTION_INTERRUPTED' }));
        result.then(resolve, reject);
      });
    }
  } catch (e) { status = interrupted(e) ? 130 : 1; report(e); }
  current = null;
  await flush(process.stdout); await flush(process.stderr);
  emit('done ' + id + ' ' + status);
}
function pump() {
  if (busy) return;
  const buf = Buffer.concat(pending); pending = [buf];
  const nl = buf.indexOf(10); if (nl < 0) return;
  const [id, length] = buf.subarray(0, nl).toString().split(' ');
  const end = nl + 1 + Number(length); if (buf.length < end) return;
  const code = buf.subarray(nl + 1, end).toString('utf8');
  pending = [buf.subarray(end)];
  busy = true;
  run(id, code).finally(() => { busy = false; pump(); });
}
const input = new net.Socket({ fd: codeFd, readable: true, writable: false });
input.on('data', (chunk) => { pending.push(chunk); pump(); });
input.on('end', () => process.exit(0));
emit('ready');
"""


def high_fd(fd: int) -> int:
    new = fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, HIGH_FD)
    os.close(fd)
    return new


def kill_everything_else() -> None:
    """SIGKILL every process of the cell but pid 1 (bwrap) and this agent: a fresh state.

    Only inside a cell (our parent is the pid namespace's init): never anywhere else.
    """
    if os.getppid() != 1:
        return
    me = os.getpid()
    for name in os.listdir("/proc"):
        if name.isdigit() and int(name) not in (1, me):
            with contextlib.suppress(OSError):
                os.kill(int(name), signal.SIGKILL)


def describe_end(returncode: int) -> tuple[int, str]:
    """(exit code, "exited with code 3" | "was killed by SIGKILL (…)") of an interpreter."""
    if returncode >= 0:
        return returncode, f"exited with code {returncode}"
    try:
        name = signal.Signals(-returncode).name
    except ValueError:
        name = f"signal {-returncode}"
    hint = " (out of memory? the cell's memory limit)" if returncode == -signal.SIGKILL else ""
    return 128 - returncode, f"was killed by {name}{hint}"


class Stream:
    """One stream of one call: its first OUTPUT_CAP bytes, and how many there were."""

    def __init__(self) -> None:
        self.data = bytearray()
        self.total = 0

    def add(self, chunk: bytes) -> None:
        self.total += len(chunk)
        room = OUTPUT_CAP - len(self.data)
        if room > 0:
            self.data += chunk[:room]

    @property
    def truncated(self) -> bool:
        return self.total > len(self.data)

    def text(self) -> str:
        """The stream as text; when cut, with a marker, and at most OUTPUT_CAP bytes in all."""
        decoder = codecs.getincrementaldecoder("utf-8")("replace")
        if not self.truncated:
            return decoder.decode(bytes(self.data), final=True)
        marker = f"\n[nixcell: output truncated: {self.total} bytes written, the first "
        head = bytes(self.data[: OUTPUT_CAP - 200])
        kept = decoder.decode(head, final=False)  # no half character at the cut
        return f"{kept}{marker}{len(kept.encode())} kept]\n"


class Interpreter:
    """One interpreter process in its own process group, with the agent's pipes as fd 0-2."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        out_r, out_w = os.pipe()
        err_r, err_w = os.pipe()
        code_r, code_w = os.pipe()
        ev_r, ev_w = os.pipe()
        code_r, ev_w = high_fd(code_r), high_fd(ev_w)
        trig_r = trig_w = -1
        stdin: int = subprocess.DEVNULL
        if kind == "python":
            argv = ["python3", "-u", os.path.join(HERE, "agent_python.py"), str(code_r), str(ev_w)]
        elif kind == "node":
            argv = ["node", "-e", NODE_DRIVER, str(code_r), str(ev_w)]
        else:
            argv = ["bash", "--noprofile", "--norc", "--noediting", "+m", "-i"]
            trig_r, trig_w = os.pipe()
            stdin = trig_r
        try:
            self.proc = subprocess.Popen(
                argv,
                stdin=stdin,
                stdout=out_w,
                stderr=err_w,
                pass_fds=(code_r, ev_w),
                start_new_session=True,
            )
        except BaseException:
            for fd in (out_r, err_r, code_w, ev_r, trig_w):
                if fd >= 0:
                    os.close(fd)
            raise
        finally:
            for fd in (out_w, err_w, code_r, ev_w, trig_r):
                if fd >= 0:
                    os.close(fd)
        # The interpreter (and what it starts) goes first when the cell runs out of memory.
        with contextlib.suppress(OSError), open(f"/proc/{self.proc.pid}/oom_score_adj", "w") as f:
            f.write("1000")
        self.pidfd = os.pidfd_open(self.proc.pid)
        self.fds = {"out": out_r, "err": err_r, "code": code_w, "ev": ev_r}
        for fd in (out_r, err_r, code_w, ev_r):
            os.set_blocking(fd, False)
        self.trigger = trig_w
        if kind == "bash":
            driver = BASH_DRIVER.replace("@IN@", str(code_r)).replace("@EV@", str(ev_w))
            with contextlib.suppress(OSError):  # small: fits the empty pipe
                os.write(trig_w, driver.encode())
        self.streams = {out_r, err_r}  # output pipes not at EOF yet
        self.outgoing = bytearray()
        self.events = bytearray()
        self.exited = False
        self.ready = False


class Call:
    def __init__(self, call_id: str) -> None:
        self.id = call_id
        self.out = Stream()
        self.err = Stream()
        self.started = False
        self.status: int | None = None

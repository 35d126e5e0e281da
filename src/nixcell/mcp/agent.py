"""The nixcell session agent: runs inside a session cell and hosts one persistent interpreter.

Self-contained (stdlib only, Python ≥ 3.9, imports nothing of nixcell): the host mounts this file
and its ``agent_*.py`` helpers read-only at /run/nixcell and starts ``python3 -E -s agent.py
--fd N --interpreter python|bash|node``. The cell's stdin/stdout/stderr carry no protocol.

Host ↔ agent, on fd N (a socket the host passed into the cell): JSON lines.
  agent → host, once:  {"event": "ready", "interpreter": …} or {"event": "error", "message": …}
  host → agent:        {"id": 7, "op": "run", "code": "…", "timeout": 30.0} | {"id": 8, …"ping"}
  agent → host:        exactly one reply per request, carrying the request's id:
                       {"id": 7, "stdout", "stderr", "exit_code", "timed_out", "truncated",
                        "state_lost", "notice", "duration_ms"} or {"id": 7, "error": "…"}
Agent ↔ interpreter: the code goes through a pipe (never argv), framed; events come back on a
second pipe as lines ``ready`` / ``started <id>`` / ``done <id> <status>``; an event with another
id than the running call's is stale and ignored. The interpreter's fd 1 and 2 are two pipes that
only this agent reads: everything written to them (by the interpreter or any child) before
``done`` belongs to the call. Output written between calls (background jobs) is counted and
reported in the next reply's notice, never mixed into its stdout/stderr.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import select
import selectors
import signal
import socket
import subprocess
import time
import traceback

from agent_interpreters import (
    READY_TIMEOUT,
    Call,
    Interpreter,
    Stream,
    describe_end,
    kill_everything_else,
)


class Agent:
    """One event loop (selectors, one thread) over the host socket and the interpreter's fds."""

    def __init__(self, sock: socket.socket, kind: str, grace: float) -> None:
        self.sock = sock
        self.kind = kind
        self.grace = grace
        self.sel = selectors.DefaultSelector()
        self.sel.register(sock, selectors.EVENT_READ, "host")
        self.inbox = bytearray()
        self.host_eof = False
        self.interp: Interpreter | None = None
        self.lost: str | None = None  # why the next call gets a fresh interpreter
        self.call: Call | None = None
        self.late = Stream()  # output written while no call was running

    # -- the loop --------------------------------------------------------------------------
    def pump(self, timeout: float | None) -> None:
        for key, _ in self.sel.select(timeout):
            what = key.data
            if what == "host":
                data = self.sock.recv(1 << 16)
                self.inbox += data
                if not data:
                    self.host_eof = True
                    self.sel.unregister(self.sock)
            elif self.interp is not None:
                self._interp_event(self.interp, what, key.fd)

    def _interp_event(self, interp: Interpreter, what: str, fd: int) -> None:
        if what == "pid":
            interp.exited = True
            self.sel.unregister(fd)
        elif what == "code":
            try:
                del interp.outgoing[: os.write(fd, interp.outgoing)]
            except BlockingIOError:
                return
            except OSError:  # the interpreter is gone: its pidfd tells the rest
                interp.outgoing.clear()
            if not interp.outgoing:
                self.sel.unregister(fd)
        else:
            try:
                data = os.read(fd, 1 << 16)
            except BlockingIOError:
                return
            if not data:
                self.sel.unregister(fd)
                interp.streams.discard(fd)
            elif what == "ev":
                interp.events += data
                self._parse_events(interp)
            elif self.call is not None:
                (self.call.out if what == "out" else self.call.err).add(data)
            else:
                self.late.add(data)

    def _parse_events(self, interp: Interpreter) -> None:
        while b"\n" in interp.events:
            line, _, rest = bytes(interp.events).partition(b"\n")
            interp.events = bytearray(rest)
            words = line.decode(errors="replace").split()
            call = self.call
            if words == ["ready"]:
                interp.ready = True
            elif call is not None and len(words) >= 2 and words[1] == call.id:
                if words[0] == "started":
                    call.started = True
                elif words[0] == "done" and len(words) == 3:
                    call.status = int(words[2])
            # anything else is stale (a call that already ended) and ignored

    def drain(self, until_eof: bool = False, limit: float = 2.0) -> None:
        """Take what the output pipes hold now (or up to EOF, once their writers are dead)."""
        interp = self.interp
        deadline = time.monotonic() + limit
        while interp is not None and interp.streams:
            wait = max(0.0, deadline - time.monotonic()) if until_eof else 0.0
            ready, _, _ = select.select(sorted(interp.streams), [], [], wait)
            if not ready:
                return
            for fd in ready:
                self._interp_event(interp, "out" if fd == interp.fds["out"] else "err", fd)

    # -- interpreter lifecycle -------------------------------------------------------------
    def start(self) -> None:
        try:
            interp = Interpreter(self.kind)
        except FileNotFoundError:
            program = {"python": "python3"}.get(self.kind, self.kind)
            raise RuntimeError(f"no '{program}' program among the cell's packages") from None
        self.interp = interp
        for what, fd in interp.fds.items():
            if what != "code":
                self.sel.register(fd, selectors.EVENT_READ, what)
        self.sel.register(interp.pidfd, selectors.EVENT_READ, "pid")
        deadline = time.monotonic() + READY_TIMEOUT
        while not interp.ready and not interp.exited and time.monotonic() < deadline:
            self.pump(deadline - time.monotonic())
        if not interp.ready:
            self.retire()
            err = self.late.text()[-2000:].strip()
            self.late = Stream()
            raise RuntimeError(
                f"the {self.kind} interpreter did not start" + (f": {err}" if err else "")
            )
        self.drain()
        self.late = Stream()  # start-up chatter is no one's output

    def retire(self) -> None:
        """Kill the interpreter, its group and every other process of the cell; collect output."""
        interp = self.interp
        if interp is None:
            return
        with contextlib.suppress(OSError):
            os.killpg(interp.proc.pid, signal.SIGKILL)
        kill_everything_else()
        with contextlib.suppress(subprocess.TimeoutExpired):
            interp.proc.wait(timeout=5)
        self.drain(until_eof=True)
        for fd in [*interp.fds.values(), interp.pidfd]:
            if fd >= 0:
                with contextlib.suppress(KeyError, ValueError):
                    self.sel.unregister(fd)
                with contextlib.suppress(OSError):
                    os.close(fd)
        self.interp = None

    def check_idle_death(self) -> None:
        interp = self.interp
        if interp is not None and self.call is None and interp.proc.poll() is not None:
            _, what = describe_end(interp.proc.returncode)
            self.retire()
            self.lost = f"the previous one {what} between calls"

    # -- requests --------------------------------------------------------------------------
    def next_request(self) -> dict[str, object] | None:
        """Wait for the host's next request line; meanwhile collect late output."""
        while b"\n" not in self.inbox:
            if self.host_eof:
                return None
            self.pump(None)
            self.check_idle_death()
        line, _, rest = bytes(self.inbox).partition(b"\n")
        self.inbox = bytearray(rest)
        return json.loads(line)

    def take_cancel(self, call_id: str) -> bool:
        """Remove a queued ``{"op": "cancel", "target": <id>}`` for this call from the inbox."""
        if b'"cancel"' not in self.inbox:
            return False
        *lines, tail = bytes(self.inbox).split(b"\n")
        kept = []
        found = False
        for line in lines:
            with contextlib.suppress(ValueError):
                message = json.loads(line)
                if message.get("op") == "cancel" and str(message.get("target")) == call_id:
                    found = True
                    continue
            kept.append(line + b"\n")
        self.inbox = bytearray(b"".join(kept) + tail)
        return found

    def send(self, message: dict[str, object]) -> None:
        with contextlib.suppress(OSError):  # the host is gone: the loop ends at EOF
            self.sock.sendall(json.dumps(message).encode() + b"\n")

    def handle(self, request: dict[str, object]) -> dict[str, object]:
        call_id = request.get("id")
        if request.get("op") == "ping":
            return {"id": call_id, "ok": True, "alive": self.interp is not None}
        if request.get("op") != "run":
            return {"id": call_id, "error": f"unknown op {request.get('op')!r}"}
        code = str(request.get("code", "")).encode("utf-8", "replace")  # lone surrogates: ?
        if self.kind == "bash" and b"\0" in code:
            return {"id": call_id, "error": "bash code must not contain NUL bytes"}
        notices: list[str] = []
        if self.interp is None:
            try:
                self.start()
            except RuntimeError as exc:
                return {"id": call_id, "error": str(exc)}
            if self.lost:
                notices.append(f"{self.kind} interpreter restarted: state lost ({self.lost})")
                self.lost = None
        self.drain()
        if self.late.total:
            preview = self.late.text()[:200]
            notices.append(
                f"{self.late.total} bytes of output written after the previous call returned "
                f"(background processes) were discarded: {preview!r}"
            )
            self.late = Stream()
        timeout = float(request.get("timeout") or 30.0)  # type: ignore[arg-type]
        reply = self.run(str(call_id), code, timeout, notices)
        reply["id"] = call_id
        return reply

    def run(self, call_id: str, code: bytes, timeout: float, notices: list[str]) -> dict:
        interp = self.interp
        assert interp is not None
        self.call = call = Call(call_id)
        if self.kind == "bash":
            interp.outgoing += call_id.encode() + b"\n" + code + b"\0"
        else:
            interp.outgoing += f"{call_id} {len(code)}\n".encode() + code
        with contextlib.suppress(KeyError):  # already registered: still writing
            self.sel.register(interp.fds["code"], selectors.EVENT_WRITE, "code")
        started = time.monotonic()
        deadline = started + timeout
        interrupted_at: float | None = None
        expired = False
        while call.status is None and not interp.exited and not self.host_eof:
            now = time.monotonic()
            if interrupted_at is None and self.take_cancel(call_id):
                deadline = now  # the host gave up on this call: interrupt it now
            if interrupted_at is None and now >= deadline:
                if not call.started:
                    expired = True  # still reading the code: it cannot be interrupted safely
                    break
                with contextlib.suppress(OSError):
                    os.killpg(interp.proc.pid, signal.SIGINT)  # like Ctrl-C: code + children
                interrupted_at = now
            elif interrupted_at is not None and now >= interrupted_at + self.grace:
                expired = True
                break
            end = deadline if interrupted_at is None else interrupted_at + self.grace
            self.pump(max(0.0, end - now))
        timed_out = interrupted_at is not None or expired
        limit = f"timed out after {timeout:g}s"
        state_lost = False
        if call.status is not None:
            self.drain()  # all the call wrote before `done` is in the pipes now
            exit_code = call.status
            if timed_out:
                exit_code = 124
                notices.append(f"{limit}: interrupted; session state kept")
        else:
            state_lost = True
            interp.proc.poll()
            died = interp.exited or interp.proc.returncode is not None
            self.retire()
            if died and not timed_out:
                exit_code, what = describe_end(interp.proc.returncode or 0)
                notices.append(
                    f"the {self.kind} interpreter {what}: session state lost; the next call "
                    "starts a fresh interpreter"
                )
                self.lost = f"the previous one {what}"
            else:
                exit_code = 124
                how = "ended" if died else "did not stop on interrupt and was killed"
                notices.append(f"{limit}: the interpreter {how}; session state lost")
                self.lost = "the previous call did not stop on interrupt and was killed"
        self.call = None
        return {
            "stdout": call.out.text(),
            "stderr": call.err.text(),
            "exit_code": exit_code,
            "timed_out": timed_out,
            "truncated": call.out.truncated or call.err.truncated,
            "state_lost": state_lost,
            "notice": "\n".join(notices) or None,
            "duration_ms": round((time.monotonic() - started) * 1000, 1),
        }

    def serve(self) -> None:
        try:
            self.start()
        except RuntimeError as exc:
            self.send({"event": "error", "message": str(exc)})
            return
        self.send({"event": "ready", "interpreter": self.kind, "pid": os.getpid()})
        while (request := self.next_request()) is not None:
            if request.get("op") == "cancel":
                continue  # for a call that already ended
            reply = self.handle(request)
            if self.host_eof:
                break
            self.send(reply)


def main() -> None:
    parser = argparse.ArgumentParser(description="nixcell session agent (runs inside a cell)")
    parser.add_argument("--fd", type=int, required=True)
    parser.add_argument("--interpreter", choices=("python", "bash", "node"), required=True)
    parser.add_argument("--grace", type=float, default=2.0)
    args = parser.parse_args()
    sock = socket.socket(fileno=args.fd)
    sock.setblocking(True)
    agent = Agent(sock, args.interpreter, args.grace)
    try:
        agent.serve()
    except Exception:  # the cell's stdio goes nowhere: tell the host why the agent ends
        agent.send({"event": "fatal", "message": traceback.format_exc()[-4000:]})
        raise
    finally:
        agent.retire()


if __name__ == "__main__":
    main()

"""The ``run`` tool: code and an environment in, a one-shot cell (or a session) out, a result back.

A one-shot call plans a fresh cell from the environment's prepared plan: the code becomes a
read-only file (``/workspace/.nixcell/main.py`` …, handed to bubblewrap through a memfd, never an
argv string) that the interpreter runs with ``/workspace`` as cwd and stdin at /dev/null. The
engine enforces the limits; stdout and stderr are read through our own pipes and kept up to
1 MiB each (the rest is drained and counted, so a chatty program can neither block nor bloat the
server). Calls with ``session`` go to the SessionManager instead.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import re
import subprocess
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from nixcell.errors import NixcellError
from nixcell.mcp.config import PROGRAMS
from nixcell.mcp.envs import Environments, Prepared

TYPE_CHECKING = False
if TYPE_CHECKING:
    from nixcell.mcp.pool import CellPool
    from nixcell.mcp.sessions import SessionManager
    from nixcell.plan import Plan
    from nixcell.runner import RunResult

OUTPUT_LIMIT = 1 << 20
CODE_LIMIT = 4 << 20
CODE_DIR = "/workspace/.nixcell"
CODE_FILES = {"python": "main.py", "bash": "main.sh", "node": "main.js"}
_SESSION = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}$")
_ARGS = ("code", "env", "session")

OUTPUT_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "stdout": {"type": "string"},
        "stderr": {"type": "string"},
        "exit_code": {"type": "integer"},
        "timed_out": {"type": "boolean"},
        "truncated": {"type": "boolean"},
        "duration_ms": {"type": "number"},
        # Only in the results of session calls: no ["string", "null"] union, which the
        # Inspector's --strict lint flags (single-type schema dialects, e.g. Gemini's, reject it).
        "session": {"type": "string"},
    },
    "required": ["stdout", "stderr", "exit_code", "timed_out", "truncated", "duration_ms"],
}


def input_schema(env_names: list[str]) -> dict[str, Any]:
    return {
        "type": "object",
        "properties": {
            "code": {"type": "string", "description": "Source code for the interpreter."},
            "env": {"type": "string", "enum": env_names, "description": "Environment name."},
            "session": {
                "type": "string",
                "description": "Optional session name: keep interpreter state across calls.",
            },
        },
        "required": ["code", "env"],
        "additionalProperties": False,
    }


class ToolFailure(Exception):
    """The call could not run; its message is the isError text shown to the model."""


@dataclass
class Outcome:
    """What one call did, in the shape of the tool's structured result."""

    stdout: str
    stderr: str
    exit_code: int
    timed_out: bool = False
    truncated: bool = False
    duration_ms: float = 0.0
    session: str | None = None
    notices: list[str] = field(default_factory=list)

    @property
    def is_error(self) -> bool:
        return self.exit_code != 0 or self.timed_out

    def structured(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data.pop("notices")
        if data["session"] is None:
            del data["session"]
        data["duration_ms"] = round(self.duration_ms, 3)
        return data

    def text(self) -> str:
        parts = []
        if self.stdout:
            parts.append(self.stdout if self.stdout.endswith("\n") else self.stdout + "\n")
        if self.stderr:
            err = self.stderr if self.stderr.endswith("\n") else self.stderr + "\n"
            parts.append(f"--- stderr ---\n{err}")
        parts += [f"{notice}\n" for notice in self.notices]
        parts.append(f"exit code: {self.exit_code}")
        return "".join(parts)


def _cut(data: bytes, dropped: int) -> tuple[str, bool]:
    text = data.decode("utf-8", errors="replace")
    if dropped:
        text += f"\n[output cut at 1 MiB: {dropped} more bytes not shown]\n"
    return text, bool(dropped)


def _cut_text(text: str) -> tuple[str, bool]:
    data = text.encode("utf-8", errors="replace")
    if len(data) <= OUTPUT_LIMIT:
        return text, False
    return _cut(data[:OUTPUT_LIMIT], len(data) - OUTPUT_LIMIT)


async def _read_capped(fd: int, limit: int = OUTPUT_LIMIT) -> tuple[bytes, int]:
    """Read ``fd`` to EOF on the loop: the first ``limit`` bytes, and how many more came.
    The caller closes ``fd``."""
    loop = asyncio.get_running_loop()
    os.set_blocking(fd, False)
    kept = bytearray()
    dropped = 0
    done: asyncio.Future[None] = loop.create_future()

    def readable() -> None:
        nonlocal dropped
        for _ in range(16):  # then yield to the loop: a fast writer must not starve it
            try:
                chunk = os.read(fd, 65536)
            except BlockingIOError:
                return
            except OSError as exc:
                if not done.done():
                    done.set_exception(exc)
                return
            if not chunk:
                if not done.done():
                    done.set_result(None)
                return
            room = max(0, limit - len(kept))
            kept.extend(chunk[:room])
            dropped += max(0, len(chunk) - room)

    loop.add_reader(fd, readable)
    try:
        await done
    finally:
        loop.remove_reader(fd)
    return bytes(kept), dropped


def code_plan(plan: Plan, interpreter: str, code: str) -> Plan:
    """The environment's cell running ``code`` as a read-only file under /workspace."""
    from nixcell.plan import MountOp

    path = f"{CODE_DIR}/{CODE_FILES[interpreter]}"
    mounts = plan.mounts
    if not mounts or mounts[-1].kind != "remount-ro":
        raise NixcellError("internal error: the plan does not end with remount-ro")
    mounts = (*mounts[:-1], MountOp("data", path, data=code), mounts[-1])
    return dataclasses.replace(plan.with_command([PROGRAMS[interpreter], path]), mounts=mounts)


def read_output(out_r: int, err_r: int) -> list[asyncio.Future[tuple[bytes, int]]]:
    """Readers of a cell's stdout and stderr pipes (each keeps its first 1 MiB)."""
    return [asyncio.ensure_future(_read_capped(fd)) for fd in (out_r, err_r)]


def outcome_of(
    result: RunResult | None,
    timed_out: bool,
    timeout: float | None,
    duration: float,
    out: tuple[bytes, int],
    err: tuple[bytes, int],
) -> Outcome:
    """The call's Outcome from its cell's result (None: killed at the call's timeout)."""
    from nixcell.units import format_duration

    stdout, cut_out = _cut(*out)
    stderr, cut_err = _cut(*err)
    timed_out = timed_out or (result is not None and result.timed_out)
    notices = []
    if timed_out:
        notices.append(f"(timed out after {format_duration(timeout or 0)})")
    elif result is not None and result.message:
        notices.append(f"({result.message})")
    if result is not None and result.no_network is not None:
        notices.append(f"({result.no_network.line('mcp')})")
    exit_code = 124 if timed_out or result is None else result.exit_code
    return Outcome(
        stdout, stderr, exit_code, timed_out, cut_out or cut_err, duration * 1000, None, notices
    )


async def run_once(plan: Plan, interpreter: str, code: str) -> Outcome:
    """One fresh cell for ``code``; the engine enforces limits and tears everything down."""
    from nixcell.runner import execute_async

    cell = code_plan(plan, interpreter, code)
    out_r, out_w = os.pipe()
    err_r, err_w = os.pipe()
    readers = read_output(out_r, err_r)
    try:
        try:
            result = await execute_async(cell, stdin=subprocess.DEVNULL, stdout=out_w, stderr=err_w)
        finally:
            os.close(out_w)  # the cell is gone with its ends: the readers see EOF
            os.close(err_w)
        out, err = await asyncio.gather(*readers)
    finally:
        for reader in readers:
            reader.cancel()  # no-op when done; a reader removes itself from the loop
        await asyncio.gather(*readers, return_exceptions=True)
        os.close(out_r)
        os.close(err_r)
    return outcome_of(result, False, plan.limits.timeout, result.duration, out, err)


class RunTool:
    """Validates arguments and dispatches a call to a one-shot cell or a session."""

    def __init__(
        self,
        envs: Environments,
        sessions: Callable[[], SessionManager],
        pool: CellPool | None = None,
    ) -> None:
        self.envs = envs
        self._sessions = sessions
        self.pool = pool

    async def call(self, arguments: dict[str, Any], *, client: str | None = None) -> Outcome:
        """Run one call; a session call goes to ``client``'s session of that name."""
        code, env_name, session = self._arguments(arguments)
        prepared = await self._environment(env_name)
        config = prepared.config
        if session is None:
            assert prepared.plan is not None
            try:
                if self.pool is not None:
                    pooled = await self.pool.run(prepared, code)
                    if pooled is not None:
                        return pooled
                return await run_once(prepared.plan, config.interpreter, code)
            except NixcellError as exc:
                raise ToolFailure(f"the cell could not run: {exc.message}") from None
        if not config.sessions:
            why = (
                "sessions = false in its configuration"
                if config.backend == "bwrap"
                else f"it runs on the {config.backend} backend; sessions need bwrap"
            )
            raise ToolFailure(
                f"environment '{env_name}' has no sessions ({why}); call without session for "
                "a fresh cell"
            )
        return await self._session_call(session, prepared, code, client)

    def _arguments(self, arguments: dict[str, Any]) -> tuple[str, str, str | None]:
        for key in arguments:
            if key not in _ARGS:
                raise ToolFailure(f"unknown argument '{key}' (expected code, env, session)")
        code, env, session = (arguments.get(k) for k in _ARGS)
        if not isinstance(code, str):
            raise ToolFailure("argument 'code' (a string of source code) is required")
        if len(code.encode("utf-8", errors="replace")) > CODE_LIMIT:
            raise ToolFailure("the code is larger than 4 MiB; write big inputs to files instead")
        if not isinstance(env, str):
            raise ToolFailure(f"argument 'env' is required: one of {', '.join(self.envs.names)}")
        if session is not None and (not isinstance(session, str) or not _SESSION.match(session)):
            raise ToolFailure(
                "session must be a name of up to 64 letters, digits, '_', '.', ':' or '-'"
            )
        return code, env, session

    async def _environment(self, name: str) -> Prepared:
        prepared = await self.envs.get(name)
        if prepared is None:
            available = ", ".join(self.envs.names)
            raise ToolFailure(f"unknown environment '{name}'; available: {available}")
        if prepared.error is not None:
            raise ToolFailure(f"environment '{name}' is unavailable: {prepared.error}")
        return prepared

    async def _session_call(
        self, session: str, prepared: Prepared, code: str, client: str | None
    ) -> Outcome:
        from nixcell.units import format_duration

        try:
            from nixcell.mcp.sessions import LOCAL, SessionEnv
        except ImportError:
            raise ToolFailure("persistent sessions are not available in this nixcell") from None
        config = prepared.config
        assert prepared.session_spec is not None
        env = SessionEnv(
            name=config.name, interpreter=config.interpreter, spec=prepared.session_spec
        )
        try:
            result = await self._sessions().call(
                session, env, code, config.timeout, client=client or LOCAL
            )
        except NixcellError as exc:
            raise ToolFailure(f"session '{session}': {exc.message}") from None
        stdout, cut_out = _cut_text(result.stdout)
        stderr, cut_err = _cut_text(result.stderr)
        notices = [result.notice] if result.notice else []
        if result.timed_out and "timed out" not in (result.notice or ""):
            notices.append(f"(timed out after {format_duration(config.timeout)})")
        return Outcome(
            stdout,
            stderr,
            result.exit_code,
            result.timed_out,
            result.truncated or cut_out or cut_err,
            result.duration_ms,
            result.session,
            notices,
        )

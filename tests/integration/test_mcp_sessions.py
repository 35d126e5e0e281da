"""Persistent MCP sessions: real session cells, real python/bash/node interpreters, no mocks.

Each test runs its own SessionManager on its own event loop (asyncio.run) and shuts it down.
Time limits here are generous upper bounds that only catch hangs.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import subprocess
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from nixcell.mcp.sessions import LOCAL, CallResult, SessionEnv, SessionError, SessionManager
from nixcell.spec import CellSpec

pytestmark = pytest.mark.usefixtures("offline_set")


def env(name: str, interpreter: str, packages: list[str], **fields: Any) -> SessionEnv:
    return SessionEnv(name, interpreter, CellSpec(command=["true"], packages=packages, **fields))


PY = env("python", "python", ["python3", "bash", "coreutils"])  # bash: os.system's /bin/sh
SH = env("shell", "bash", ["bash", "coreutils"])
NODE = env("node", "node", ["nodejs", "coreutils"])
ENVS = {"python": PY, "bash": SH, "node": NODE}


def with_manager(body: Callable[[SessionManager], Awaitable[Any]], **options: Any) -> Any:
    options.setdefault("interrupt_grace", 1.0)

    async def main() -> Any:
        manager = SessionManager(**options)
        try:
            return await asyncio.wait_for(body(manager), 180)
        finally:
            await manager.shutdown()

    return asyncio.run(main())


def calls(env_: SessionEnv, *codes: str, timeout: float = 30, **options: Any) -> list[CallResult]:
    """Run the codes one after the other in one session; all results."""

    async def body(manager: SessionManager) -> list[CallResult]:
        return [await manager.call("s", env_, code, timeout) for code in codes]

    return with_manager(body, **options)


def ok(result: CallResult) -> CallResult:
    assert (result.exit_code, result.timed_out) == (0, False), result
    return result


# -- persistence -----------------------------------------------------------------------------


def test_python_namespace_persists():
    results = calls(PY, "x = 1\nimport math\ndef f(): return x * 10", "x += 1; print(x, f())")
    assert ok(results[1]).stdout == "2 20\n"
    assert [r.notice for r in results] == [None, None]


def test_python_classes_pickle_from_main():
    code = "import pickle\nclass P: pass\nprint(type(pickle.loads(pickle.dumps(P()))).__name__)"
    assert ok(calls(PY, code)[0]).stdout == "P\n"


def test_bash_state_persists():
    first = "v=41; cd /tmp; greet() { echo hello $1; }; export E=e; alias ll='echo aliased'"
    results = calls(SH, first, "v=$((v + 1)); echo $v $PWD $E; greet you; ll")
    assert ok(results[1]).stdout == "42 /tmp e\nhello you\naliased\n"


def test_bash_exit_status_is_the_last_commands():
    results = calls(SH, "true; false", "false; true", "(exit 7)", "if then")
    assert [r.exit_code for r in results] == [1, 0, 7, 2]
    assert "syntax error" in results[3].stderr


def test_node_globals_persist():
    first = "var a = 1; globalThis.b = 2; function f() { return a + b; }; let c = 3"
    results = calls(NODE, first, "a += 1; console.log(a, b, f(), c)")
    assert ok(results[1]).stdout == "2 2 4 3\n"


def test_node_exit_codes_and_top_level_await():
    results = calls(
        NODE,
        "throw new Error('boom')",
        "await new Promise((r) => setTimeout(r, 50)); console.log('awaited')",
        "Promise.reject(new Error('rejected'))",
    )
    assert results[0].exit_code == 1 and "Error: boom" in results[0].stderr
    assert ok(results[1]).stdout == "awaited\n"
    assert results[2].exit_code == 1 and "rejected" in results[2].stderr


def test_python_exception_exit_code_and_traceback():
    result = calls(PY, "def f():\n    1 / 0\nf()")[0]
    assert result.exit_code == 1
    assert "ZeroDivisionError" in result.stderr and '<call 1>", line 2, in f' in result.stderr
    assert "agent_python" not in result.stderr


# -- timeouts: interrupt, restart, request ids -----------------------------------------------


@pytest.mark.parametrize(
    ("env_", "setup", "spin", "check", "expect"),
    [
        (PY, "x = 'kept'", "while True: pass", "print(x)", "kept\n"),
        (SH, "x=kept", "sleep 100", "echo $x", "kept\n"),
        (SH, "x=kept", "while :; do :; done", "echo $x", "kept\n"),
        (NODE, "var x = 'kept'", "while (true) {}", "console.log(x)", "kept\n"),
        (NODE, "var x = 'kept'", "await new Promise(() => {})", "console.log(x)", "kept\n"),
    ],
)
def test_timeout_interrupts_and_keeps_state(env_, setup, spin, check, expect):
    results = calls(env_, setup, spin, check, "", timeout=1)
    spun = results[1]
    assert spun.timed_out and spun.exit_code == 124 and not spun.state_lost
    assert "interrupted; session state kept" in (spun.notice or "")
    after = ok(results[2])
    assert after.stdout == expect and after.notice is None  # its own output, nothing else


def test_python_timeout_then_next_call_gets_its_own_output():
    results = calls(PY, "import time\nprint('before'); time.sleep(100)", "print('mine')", timeout=1)
    assert results[0].timed_out and results[0].stdout == "before\n"
    assert "KeyboardInterrupt" in results[0].stderr
    assert ok(results[1]).stdout == "mine\n" and results[1].stderr == ""


@pytest.mark.parametrize(
    ("env_", "setup", "stubborn", "check"),
    [
        (
            PY,
            "x = 1",
            "import signal\nsignal.signal(signal.SIGINT, signal.SIG_IGN)\nwhile True: pass",
            "print(x)",
        ),
        (SH, "x=1", "trap '' INT; sleep 100", "echo ${x:-unset}"),
        (NODE, "var x = 1", "process.on('SIGINT', () => {}); await new Promise(() => {})", "x"),
    ],
)
def test_code_ignoring_the_interrupt_is_killed_and_the_interpreter_restarts(
    env_, setup, stubborn, check
):
    results = calls(env_, setup, stubborn, check, "", timeout=1)
    killed = results[1]
    assert killed.timed_out and killed.state_lost and killed.exit_code == 124
    assert "session state lost" in (killed.notice or "")  # killed (or died of the SIGINT)
    fresh = results[2]
    assert "restarted: state lost" in (fresh.notice or "")
    if env_ is SH:
        assert fresh.stdout == "unset\n"
    else:  # NameError / ReferenceError: the state is gone
        assert fresh.exit_code == 1 and "not defined" in fresh.stderr
    assert ok(results[3]).notice is None


def test_a_late_reply_is_never_taken_for_the_next_request():
    """Host side: a request whose reply is late is dropped; the next one gets its own reply."""

    async def body(manager: SessionManager) -> tuple[Any, Any]:
        await manager.call("s", PY, "import time", 30)
        # the request layer, with a host wait shorter than the code
        session = manager._sessions[(LOCAL, "s")]
        with pytest.raises(TimeoutError):
            await session.request({"op": "run", "code": "time.sleep(1); print('late')"}, 0.2)
        second = await session.request({"op": "run", "code": "print('second')"}, 30)
        third = await manager.call("s", PY, "print('third')", 30)
        return second, third

    second, third = with_manager(body)
    assert second is not None and second["stdout"] == "second\n"
    assert third.stdout == "third\n"


def test_a_cancelled_call_is_interrupted_and_the_next_call_does_not_wait_for_it():
    async def body(manager: SessionManager) -> tuple[CallResult, float]:
        await manager.call("s", PY, "x = 'kept'", 30)
        spinning = asyncio.ensure_future(manager.call("s", PY, "while True: pass", 120))
        await asyncio.sleep(1.0)
        spinning.cancel()  # e.g. the MCP client cancelled the tool call
        started = asyncio.get_running_loop().time()
        after = await manager.call("s", PY, "print(x)", 30)
        return after, asyncio.get_running_loop().time() - started

    after, waited = with_manager(body)
    assert ok(after).stdout == "kept\n" and after.notice is None
    assert waited < 60  # far below the cancelled call's 120 s timeout


# -- output ----------------------------------------------------------------------------------


def test_subprocess_output_is_captured():
    code = (
        "import os, subprocess, sys\n"
        "os.system('echo from-system')\n"
        "subprocess.run(['echo', 'from-subprocess'])\n"
        "subprocess.run(['sh', '-c', 'echo to-stderr >&2'])\n"
        "print('from-python')"
    )
    result = ok(calls(PY, code)[0])
    assert result.stdout == "from-system\nfrom-subprocess\nfrom-python\n"
    assert result.stderr == "to-stderr\n"
    bash = ok(calls(SH, "ls /proc/self/fd | wc -l; (echo from-subshell); cat <<< heredoc")[0])
    assert bash.stdout == "4\nfrom-subshell\nheredoc\n"  # 0-2 and ls's own dir fd: no protocol fd
    node = "require('child_process').execFileSync('echo', ['from-child'], { stdio: 'inherit' })"
    assert ok(calls(NODE, node)[0]).stdout == "from-child\n"


def test_background_output_after_the_call_is_reported_not_mixed_in():
    async def body(manager: SessionManager) -> list[CallResult]:
        first = await manager.call("s", SH, "(sleep 0.2; echo late-line) & echo now", 30)
        await asyncio.sleep(1.5)  # the background job writes while no call runs
        second = await manager.call("s", SH, "echo mine", 30)
        return [first, second]

    first, second = with_manager(body)
    assert first.stdout == "now\n"
    assert second.stdout == "mine\n"
    assert "discarded" in (second.notice or "") and "late-line" in (second.notice or "")


@pytest.mark.parametrize(
    ("env_", "code"),
    [(PY, "print('a', end='')"), (SH, "printf a"), (NODE, "process.stdout.write('a')")],
)
def test_output_without_trailing_newline_is_kept(env_, code):
    assert ok(calls(env_, code)[0]).stdout == "a"


def test_output_over_one_mib_is_cut_with_a_marker():
    results = calls(PY, "import sys\nsys.stdout.write('é' * (3 << 20))", "print('after')")
    big = ok(results[0])
    assert big.truncated
    kept, marker = big.stdout.split("\n[nixcell: output truncated", 1)
    assert len(big.stdout.encode()) <= 1 << 20  # marker included: the 1 MiB limit holds
    assert set(kept) == {"é"} and len(kept) >= (1 << 19) - 200
    assert f"{6 << 20} bytes written" in marker
    assert ok(results[1]).stdout == "after\n" and not results[1].truncated


@pytest.mark.parametrize(
    ("env_", "code", "check"),
    [
        (PY, "input()", lambda r: r.exit_code == 1 and "EOFError" in r.stderr),
        (SH, "read x; echo status=$?; cat; echo cat=$?", lambda r: r.stdout == "status=1\ncat=0\n"),
        (
            NODE,
            "console.log(require('fs').readFileSync(0).length);"
            "await new Promise((r) => process.stdin.on('end', r).resume()); console.log('end')",
            lambda r: r.stdout == "0\nend\n",
        ),
    ],
)
def test_stdin_reads_get_eof(env_, code, check):
    result = calls(env_, code, timeout=30)[0]
    assert not result.timed_out and check(result), result


# -- dead interpreters -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("env_", "setup", "die", "code", "check"),
    [
        (
            PY,
            "x = 1",
            "import os; print('bye', end='', flush=True); os._exit(1)",
            1,
            "print('x' in globals())",
        ),
        (
            NODE,
            "var x = 1",
            "process.reallyExit(5)",  # process.exit() ends only the call (test_mcp_drivers)
            5,
            "console.log(typeof x === 'undefined' ? 'False' : 'True')",
        ),
    ],
)
def test_dead_interpreter_reports_its_exit_code_and_restarts(env_, setup, die, code, check):
    results = calls(env_, setup, die, check, "")
    dying, fresh = results[1], results[2]
    assert dying.exit_code == code and dying.state_lost and not dying.timed_out
    assert f"exited with code {code}" in (dying.notice or "")
    assert "restarted: state lost" in (fresh.notice or "")
    assert ok(fresh).stdout == "False\n"
    assert ok(results[3]).notice is None
    if "bye" in die:
        assert dying.stdout.startswith("bye")


def test_memory_limit_kills_an_allocation_and_the_session_restarts_cleanly():
    limited = env("python", "python", ["python3"], limits={"memory": "128M"})
    results = calls(
        limited,
        "x = 1",
        "b = bytearray(1 << 30)\nb[::4096] = b'x' * len(b[::4096])",
        "print(x)",
        "print('ok')",
    )
    killed = results[1]
    assert killed.exit_code == 137 and killed.state_lost
    assert "SIGKILL" in (killed.notice or "")
    assert "restarted" in (results[2].notice or "") and "NameError" in results[2].stderr
    assert ok(results[3]).stdout == "ok\n"


# -- workspace, environments, lifecycle ------------------------------------------------------


def test_workspace_persists_across_calls_and_restarts():
    results = calls(
        PY,
        "import os; print(os.getcwd()); open('notes.txt', 'w').write('kept')",
        "import os; os._exit(0)",
        "print(open('/workspace/notes.txt').read())",
    )
    assert ok(results[0]).stdout == "/workspace\n"
    assert ok(results[2]).stdout == "kept\n"


@pytest.mark.parametrize("disk", [None, "8M"])
def test_workspace_is_bounded_and_lives_in_no_host_directory(disk):
    """A session's /workspace is a tmpfs of its own size (not a host directory to fill): it
    survives the session's cell restarts, refuses writes past its size and leaves nothing."""
    from nixcell.sandbox.holder import volume_dir

    limits = {"limits": {"disk": disk}} if disk else {}
    spec_env = env("python", "python", ["python3", "coreutils"], **limits)
    size = (8 << 20) if disk else (256 << 20)
    fill = (
        "import errno, os\nwritten = 0\ntry:\n    with open('big', 'wb') as f:\n"
        f"        while written < {size * 2}:\n"
        "            f.write(b'x' * (1 << 20)); f.flush(); written += 1 << 20\n"
        "except OSError as e:\n    print(errno.errorcode[e.errno], written // (1 << 20))\n"
        "os.remove('big'); open('kept', 'w').write('yes')"
    )
    results = calls(
        spec_env,
        fill,
        "import os; os._exit(0)",  # the cell ends: the next call starts a new one
        "print(open('/workspace/kept').read())",
        "import shutil; print(shutil.disk_usage('/workspace').total)",
    )
    code, mib = ok(results[0]).stdout.split()
    assert code == "ENOSPC" and int(mib) <= size >> 20
    assert ok(results[2]).stdout == "yes\n"
    assert int(ok(results[3]).stdout) == size
    assert os.listdir(volume_dir()) == []  # the host side of the volume stays empty


def test_a_session_is_bound_to_its_environment():
    async def body(manager: SessionManager) -> str:
        await manager.call("s", PY, "1", 30)
        with pytest.raises(SessionError) as caught:
            await manager.call("s", SH, "echo hi", 30)
        return str(caught.value)

    message = with_manager(body)
    assert "'python'" in message and "'shell'" in message


def test_least_recently_used_session_is_evicted_with_a_notice():
    async def body(manager: SessionManager) -> tuple[CallResult, list[str]]:
        for name in ("a", "b", "c"):
            await manager.call(name, PY, f"name = {name!r}", 30)
        listed = sorted(s["id"] for s in manager.list())  # type: ignore[type-var]
        again = await manager.call("a", PY, "print(globals().get('name'))", 30)
        return again, listed

    again, listed = with_manager(body, max_sessions=2)
    assert listed == ["b", "c"]
    assert "evicted" in (again.notice or "") and again.stdout == "None\n"


def test_idle_sessions_are_reaped_and_the_next_call_says_so(tmp_path: Path):
    async def body(manager: SessionManager) -> tuple[CallResult, list[Any]]:
        await manager.call("s", PY, "x = 1", 30)
        await asyncio.sleep(2.5)
        listed = manager.list()
        return await manager.call("s", PY, "print('x' in globals())", 30), listed

    after, listed = with_manager(body, idle_timeout=1.0, workspace_root=str(tmp_path))
    assert listed == []
    assert "unused" in (after.notice or "") and after.stdout == "False\n"


def test_shutdown_leaves_no_process_cgroup_or_workspace(tmp_path: Path):
    marker = "987654.25"
    limited = {"limits": {"memory": "256M", "pids": 64}}
    envs = [
        env("python", "python", ["python3", "coreutils"], **limited),
        env("shell", "bash", ["bash", "coreutils"], **limited),
        env("node", "node", ["nodejs", "coreutils"], **limited),
    ]
    codes = [
        f"import subprocess; subprocess.Popen(['sleep', '{marker}'])",
        f"sleep {marker} &",
        f"require('child_process').spawn('sleep', ['{marker}'], {{ detached: true }})",
    ]

    async def body(manager: SessionManager) -> int:
        for i, (env_, code) in enumerate(zip(envs, codes, strict=True)):
            ok(await manager.call(f"s{i}", env_, code, 30))
        await asyncio.sleep(0.3)
        running = subprocess.run(["pgrep", "-f", f"sleep {marker}"], capture_output=True)
        await manager.shutdown()
        return len(running.stdout.split())

    assert with_manager(body, workspace_root=str(tmp_path)) == 3
    assert subprocess.run(["pgrep", "-f", f"sleep {marker}"]).returncode == 1
    ps = subprocess.run(["ps", "-eo", "ppid=,comm="], capture_output=True, text=True).stdout
    assert not [line for line in ps.splitlines() if line.split() == [str(os.getpid()), "bwrap"]]
    from nixcell.sandbox.cgroups import list_cell_cgroups

    assert [p for p in list_cell_cgroups() if str(os.getpid()) in p.name] == []
    assert list(tmp_path.iterdir()) == []


def test_close_ends_a_session():
    async def body(manager: SessionManager) -> tuple[bool, bool, CallResult]:
        await manager.call("s", SH, "v=1", 30)
        closed, again = await manager.close("s"), await manager.close("s")
        return closed, again, await manager.call("s", SH, "echo ${v:-fresh}", 30)

    closed, again, fresh = with_manager(body)
    assert (closed, again) == (True, False)
    assert fresh.stdout == "fresh\n" and fresh.notice is None


def test_ten_sessions_in_parallel_without_cross_talk():
    async def body(manager: SessionManager) -> list[list[CallResult]]:
        async def one(i: int) -> list[CallResult]:
            kind = ("python", "bash", "node")[i % 3]
            first = {"python": f"n = {i}", "bash": f"n={i}", "node": f"var n = {i}"}[kind]
            show = {
                "python": "print(n * 2)",
                "bash": "echo $((n * 2))",
                "node": "console.log(n * 2)",
            }
            env_, show = ENVS[kind], show[kind]
            return [await manager.call(f"p{i}", env_, c, 60) for c in (first, show, show)]

        return await asyncio.gather(*(one(i) for i in range(10)))

    for i, results in enumerate(with_manager(body)):
        assert [r.stdout for r in results] == ["", f"{i * 2}\n", f"{i * 2}\n"], results
        assert {r.session for r in results} == {f"p{i}"}


def test_calls_to_one_session_are_serialised():
    code = "import time\nt0 = time.monotonic(); time.sleep(0.3); print(t0, time.monotonic())"

    async def body(manager: SessionManager) -> list[CallResult]:
        return await asyncio.gather(*(manager.call("s", PY, code, 30) for _ in range(3)))

    spans = sorted(tuple(map(float, ok(r).stdout.split())) for r in with_manager(body))
    assert all(a[1] <= b[0] for a, b in itertools.pairwise(spans))


def test_clients_are_separate_and_evict_only_their_own(tmp_path: Path):
    """Keys are (client, name): same names, separate state; list/close per client; eviction
    and the server-wide limit never end another client's session; an ended client is gone."""

    async def body(manager: SessionManager) -> dict[str, Any]:
        seen: dict[str, Any] = {}
        await manager.call("s", PY, "who = 'a'", 30, client="a")
        await manager.call("t", PY, "who = 'a-t'", 30, client="a")
        seen["b_fresh"] = await manager.call("s", PY, "print(globals().get('who'))", 30, client="b")
        seen["lists"] = [sorted(x["id"] for x in manager.list(client=c)) for c in "ab"]
        seen["b_closes_a"] = await manager.close("t", client="b")
        await manager.call("u", PY, "1", 30, client="b")
        with pytest.raises(SessionError) as full:
            await manager.call("x", PY, "1", 30, client="c")  # 4 sessions held by a and b
        seen["full"] = str(full.value)
        await manager.call("v", PY, "1", 30, client="b")  # b's limit (2): evicts b's own "s"
        seen["b_after"] = sorted(x["id"] for x in manager.list(client="b"))
        seen["a_kept"] = await manager.call("t", PY, "print(who)", 30, client="a")
        seen["ended"] = manager.end_client("a")
        with pytest.raises(SessionError) as gone:
            await manager.call("s", PY, "1", 30, client="a")
        seen["gone"] = str(gone.value)
        seen["c_now"] = await manager.call("x", PY, "print('c')", 30, client="c")
        return seen

    seen = with_manager(body, max_sessions=4, max_client_sessions=2, workspace_root=str(tmp_path))
    assert seen["b_fresh"].stdout == "None\n"
    assert seen["lists"] == [["s", "t"], ["s"]]
    assert seen["b_closes_a"] is False
    assert seen["b_after"] == ["u", "v"]
    assert "maximum of 4 sessions" in seen["full"]
    assert seen["a_kept"].stdout == "a-t\n"
    assert seen["ended"] == 2 and "has ended" in seen["gone"]
    assert seen["c_now"].stdout == "c\n"
    assert list(tmp_path.iterdir()) == []  # every workspace removed, a's included

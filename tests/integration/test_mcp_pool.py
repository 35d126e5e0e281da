"""One-shot MCP calls from the pool of pre-started cells: real `nixcell mcp` servers, the SDK's
client, real cells. Whether a call ran in a pooled cell is read in the cell itself: the pool's
driver writes the code file (one link), a fresh cell gets it from bubblewrap (no link)."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import anyio
import pytest
from mcp.client import Client
from tests.conftest import NIXCELL
from tests.integration import test_mcp_server as base
from tests.integration.test_mcp_server import (
    _cgroups_of,
    _descends,
    _popen,
    bwrap_pids,
    with_client,
)

pytestmark = pytest.mark.integration
project = base.project  # the fixture: a project directory, the offline set built

EXTRA = """
[environments.node]
preset = "node"

[environments.tight]
preset = "python"
memory_mb = 128
pids = 24
timeout_seconds = 2
"""  # after test_mcp_server's environments: python, shell, small, broken, net

# In each interpreter: "1" when the code file was written by the pool's driver, "0" when
# bubblewrap made it (a fresh cell).
POOLED = {
    "python": "import os; print('pooled', os.stat(__file__).st_nlink)",
    "shell": 'echo pooled "$(stat -c %h "$0")"',
    "node": "console.log('pooled', require('fs').statSync(__filename).nlink)",
}
POOLED |= {"tight": POOLED["python"], "edited": POOLED["shell"]}  # by environment


def _config(project: Path, extra: str = "") -> str:
    path = project.parent / "pool.toml"
    path.write_text(base.CONFIG.format(project=project) + EXTRA + extra)
    return str(path)


async def _call(client: Client, env: str, code: str) -> dict[str, Any]:
    result = await client.call_tool("run", {"code": code, "env": env})
    data = dict(result.structured_content or {})
    data.pop("duration_ms", None)
    return {**data, "text": result.content[0].text, "is_error": result.is_error}  # type: ignore[union-attr]


async def _pooled(client: Client, env: str) -> bool:
    """Run the probe; True if it ran in a pooled cell."""
    out = (await _call(client, env, POOLED[env]))["stdout"]
    assert out in ("pooled 0\n", "pooled 1\n"), out
    return out == "pooled 1\n"


async def _until_pooled(client: Client, env: str) -> None:
    """Wait until the environment's pool has a cell (the probe uses it up; it is refilled)."""
    for _ in range(200):
        if await _pooled(client, env):
            await asyncio.sleep(0.5)  # its replacement
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"no pooled cell for {env}")


# -- results are the same with the pool on and off -------------------------------------------

PROGRAMS: list[tuple[str, str]] = [
    ("python", "print(1)"),
    ("python", "import sys; print(sys.argv, __file__, __name__, sys.path[0], __spec__)"),
    ("python", "print(sorted(globals()), __loader__.name, __loader__.path)"),
    ("python", "import os; print(os.getpid(), os.getppid(), os.getcwd(), sorted(os.listdir()))"),
    ("python", "import os; print(sorted(os.environ.items()))"),
    ("python", "import sys; print('out'); print('err', file=sys.stderr); sys.exit(3)"),
    ("python", "def f():\n    raise ValueError('x')\nf()\n"),
    ("python", "print("),
    ("python", "# -*- coding: latin-1 -*-\nprint('\xe9')\n"),
    (
        "python",
        "import os; print(oct(os.stat(__file__).st_mode), oct(os.stat('.nixcell').st_mode))",
    ),
    (
        "python",
        "import subprocess; print(subprocess.run(['sh', '-c', 'echo $PPID'],"
        " capture_output=True, text=True).stdout)",
    ),
    ("python", "import atexit; atexit.register(print, 'bye'); print('hi')"),
    ("python", "raise SystemExit('gone')"),
    ("python", "open(__file__ + '.x', 'w')"),
    ("shell", "echo hi; echo $0 $# $SHLVL $- $PPID $$"),
    ("shell", "env | sort; umask; pwd; ls -l /workspace"),
    ("shell", "printf 'a\\n\\n'; echo err >&2; exit 4"),
    ("shell", "echo -n no-newline"),
    ("shell", 'echo "$_"; python3 -c pass 2>&1; cat /proc/self/status | grep -c ^Umask'),
    ("shell", 'echo "$BASH_SOURCE" "${BASH_ARGV[*]-}"; caller; set -o | grep -c on'),
    ("shell", "  trailing-blank-lines\n\n\n"),
    ("node", "console.log(1)"),
    ("node", "console.log(process.argv.length, process.argv[1], __filename, process.execArgv)"),
    ("node", "console.log(require.main === module, module.id, process.mainModule === module)"),
    ("node", "console.error('e'); process.exitCode = 5"),
    ("node", "throw new Error('boom')"),
    ("node", "function f(){ return f(); } f()"),
    ("node", "const x = ;"),
    ("node", "console.log(Object.keys(process.env).sort().join(','), process.cwd(), process.pid)"),
    ("node", "setTimeout(() => console.log('later'), 10); console.log('now')"),
    ("node", "import fs from 'fs'; console.log(typeof fs.readFileSync, import.meta.url)"),
    ("node", "await Promise.resolve(); console.log('top-level await')"),
    (
        "node",
        "require('fs').writeFileSync('c.js', \"console.log('child', process.execArgv)\");"
        " require('child_process').fork('c.js')",
    ),
    ("python", "print('nul\0')"),
    ("shell", "echo 'nul\0'"),
]


def test_results_identical_with_pool_on_and_off(project):
    config = _config(project)

    async def run_all(client: Client, pooled: bool) -> list[dict[str, Any]]:
        out = []
        for env, code in PROGRAMS:
            if pooled:
                await _until_pooled(client, env)
            out.append(await _call(client, env, code))
            assert await _pooled(client, env) is False or pooled  # off: never pooled
        return out

    off = with_client(project, lambda c: run_all(c, False), "--config", config, "--pool", "0")
    on = with_client(project, lambda c: run_all(c, True), "--config", config, "--pool", "1")
    for (env, code), a, b in zip(PROGRAMS, off, on, strict=True):
        assert a == b, f"{env}: {code!r}"
    assert off[0]["stdout"] == "1\n" and off[3]["stdout"].startswith("2 1 /workspace")


# -- a pooled cell is used once ----------------------------------------------------------------

USED = {
    "python": (
        "import os, subprocess\n"
        "open('/tmp/left', 'w').write('x'); open('/workspace/left', 'w').write('x')\n"
        "subprocess.Popen(['sleep', '300'], start_new_session=True)\n"
        "os.environ['LEFT'] = '1'; os.putenv('LEFT', '1')\n"
        "print(os.getpid(), os.stat(__file__).st_nlink)\n"
    ),
    "shell": (
        "echo x > /tmp/left; echo x > /workspace/left; (setsid sleep 300 &); export LEFT=1\n"
        'echo $$ "$(stat -c %h "$0")"\n'
    ),
}
CHECK = {
    "python": (
        "import os\n"
        "print(os.path.exists('/tmp/left'), os.path.exists('/workspace/left'),"
        " 'LEFT' in os.environ, sorted(p for p in os.listdir('/proc') if p.isdigit()),"
        " os.listdir('/tmp'), os.getpid(), os.stat(__file__).st_nlink)\n"
    ),
    "shell": (
        "ls /tmp /workspace; echo ${LEFT-unset}; ls -d /proc/[0-9]* | wc -l;"
        ' echo $$ "$(stat -c %h "$0")"'
    ),
}


@pytest.mark.parametrize("env", ["python", "shell"])
def test_a_pooled_cell_is_used_once(project, env):
    async def body(client: Client) -> None:
        for _ in range(3):
            await _until_pooled(client, env)
            first = await _call(client, env, USED[env])
            assert first["exit_code"] == 0 and first["stdout"] == "2 1\n", first
            await _until_pooled(client, env)
            second = await _call(client, env, CHECK[env])
            if env == "python":
                assert second["stdout"] == "False False False ['1', '2'] [] 2 1\n", second
            else:  # ls /tmp /workspace; LEFT; pids: bwrap's init, bash, ls, wc (+ the $(…))
                lines = second["stdout"].splitlines()
                assert lines[:4] == ["/tmp:", "", "/workspace:", "unset"], second
                assert int(lines[4]) <= 5 and lines[5:] == ["2 1"], second

    with_client(project, body, "--config", _config(project), "--pool", "1")


def test_the_python_driver_hands_over_a_warmed_interpreter(project):
    """What the pooled interpreter did while it waited (docs/mcp.md lists it): its start-up's
    objects are frozen, nothing else; a user's own objects are collected as in a fresh cell."""
    code = (
        "import gc, weakref\n"
        "class C: pass\n"
        "c = C(); c.me = c; r = weakref.ref(c); del c; gc.collect()\n"
        "print(gc.get_freeze_count() > 1000, r() is None, gc.isenabled())"
    )

    async def body(client: Client) -> None:
        await _until_pooled(client, "python")
        result = await _call(client, "python", code)
        assert result["stdout"] == "True True True\n", result

    with_client(project, body, "--config", _config(project), "--pool", "1")


# -- the environment's limits hold in pooled cells ---------------------------------------------


def test_limits_hold_for_pooled_cells(project):
    probe = POOLED["python"] + "\nimport sys; sys.stdout.flush()\n"  # before it is killed

    async def body(client: Client) -> None:
        await _until_pooled(client, "tight")
        memory = await _call(client, "tight", probe + "b = bytearray(1 << 30)\nprint('survived')")
        assert memory["stdout"] == "pooled 1\n" and memory["exit_code"] == 137, memory
        assert "(killed: out of memory (limit 128M))" in memory["text"]

        await _until_pooled(client, "tight")
        fork = probe + (
            "import subprocess\nprocs = []\n"
            "try:\n    for _ in range(40):\n"
            "        procs.append(subprocess.Popen(['sleep', '30']))\n"
            "except OSError as exc:\n    print('refused', exc.errno, len(procs) < 24)\n"
        )
        pids = await _call(client, "tight", fork)
        assert pids["stdout"] == "pooled 1\nrefused 11 True\n", pids

        await _until_pooled(client, "tight")
        slow = await _call(client, "tight", probe + "import time; time.sleep(30)")
        assert slow["stdout"] == "pooled 1\n" and slow["timed_out"] and slow["exit_code"] == 124
        assert "(timed out after 2s)" in slow["text"]

        # The cell waited longer than the timeout; the call's 2 s start with the code.
        await _until_pooled(client, "tight")
        await asyncio.sleep(3)
        late = await _call(client, "tight", probe + "import time; time.sleep(1.2); print('ok')")
        assert late["stdout"] == "pooled 1\nok\n" and not late["timed_out"], late

    with_client(project, body, "--config", _config(project), "--pool", "1")


# -- more calls than pooled cells ------------------------------------------------------------


def test_concurrent_calls_beyond_the_pool(project):
    code = (
        "import os, time\nassert not os.path.exists('/tmp/mark')\n"
        "open('/tmp/mark', 'w').write('{i}'); time.sleep(0.3)\n"
        "print(open('/tmp/mark').read(), os.getpid(), os.stat(__file__).st_nlink)\n"
    )

    async def body(client: Client) -> list[dict[str, Any]]:
        await _until_pooled(client, "python")
        await asyncio.sleep(1)  # two waiting
        results: list[dict[str, Any]] = [{}] * 8

        async def one(i: int) -> None:
            results[i] = await _call(client, "python", code.format(i=i))

        async with anyio.create_task_group() as tg:
            for i in range(8):
                tg.start_soon(one, i)
        return results

    results = with_client(project, body, "--config", _config(project), "--pool", "2")
    outs = [r["stdout"].split() for r in results]
    assert [o[:2] for o in outs] == [[str(i), "2"] for i in range(8)], results
    assert {o[2] for o in outs} == {"0", "1"}  # some pooled, the rest fresh cells


# -- a changed environment never gets an old cell --------------------------------------------


def test_an_edited_policy_file_discards_the_pool(project):
    policy = project.parent / "policy.toml"
    policy.write_text('[[rules]]\naction = "allow"\n[rules.pattern]\nhost = "a.test"\n')
    edited = f'\n[environments.edited]\npreset = "shell"\npolicy = "{policy}"\n'

    async def body(client: Client) -> None:
        await _until_pooled(client, "edited")
        await asyncio.sleep(0.5)
        policy.write_text('[[rules]]\naction = "allow"\n[rules.pattern]\nhost = "b.test"\n')
        assert await _pooled(client, "edited") is False  # the waiting cell read the old file
        await _until_pooled(client, "edited")  # and the pool refills with the new one

    with_client(project, body, "--config", _config(project, edited), "--pool", "1")


# -- nothing is left when the server ends ---------------------------------------------------


def _waiting_cells(server: subprocess.Popen[bytes], count: int) -> set[int]:
    """Wait until ``server`` has ``count`` cells (the pool's: no call was made)."""
    deadline = time.monotonic() + 120
    while len(ours := {p for p in bwrap_pids() if _descends(p, server.pid)}) < count:
        assert time.monotonic() < deadline, f"only {len(ours)} cells"
        time.sleep(0.1)
    return ours


def _alive(pids: set[int]) -> set[int]:
    """Those of ``pids`` still running (a killed server's cells are zombies of this test
    process, a subreaper, which does not reap what is not its own)."""
    alive = set()
    for pid in pids & bwrap_pids():
        try:
            state = Path(f"/proc/{pid}/status").read_text().split("State:")[1].split()[0]
        except (OSError, IndexError):
            continue
        if state != "Z":
            alive.add(pid)
    return alive


@pytest.mark.parametrize("how", ["stdin-eof", "sigterm", "sigkill"])
def test_server_exit_leaves_no_pooled_cell(project, how):
    from nixcell.sandbox.cgroups import list_cell_cgroups

    proc = _popen(project, "--config", _config(project), "--pool", "1")
    cells = _waiting_cells(proc, 6 * 2)  # 6 environments (one with a network), 2 bwraps a cell
    assert len({c.name for c in _cgroups_of(proc, list_cell_cgroups())}) == 6  # one per cell
    if how == "stdin-eof":
        proc.stdin.close()  # type: ignore[union-attr]
        proc.stdin = None
    else:
        proc.send_signal(signal.SIGTERM if how == "sigterm" else signal.SIGKILL)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == (-9 if how == "sigkill" else 0), err.decode()
    assert b"Traceback" not in err
    deadline = time.monotonic() + 30
    while _alive(cells) and time.monotonic() < deadline:  # they die with their parent
        time.sleep(0.1)
    assert _alive(cells) == set()
    if how == "sigkill":  # no finally ran: the next start sweeps the cgroups
        subprocess.run([NIXCELL, "mcp"], stdin=subprocess.DEVNULL, capture_output=True, timeout=60)
    assert _cgroups_of(proc, list_cell_cgroups()) == []


def test_pool_setting_is_checked(project):
    bad = project.parent / "bad.toml"
    bad.write_text('[environments.py]\npreset = "python"\npool = -1\n')
    proc = subprocess.run([NIXCELL, "mcp", "--config", str(bad)], capture_output=True, timeout=60)
    assert proc.returncode == 2
    assert proc.stderr.decode() == f"nixcell: {bad}:3: pool must be a whole number from 0 to 16\n"

"""Session drivers an LLM cannot break by accident (issue 9 §3): real session cells, real
python/bash/node interpreters, and the real MCP client for the end-to-end view.

Each class of accident is one table (or a list derived from the driver's own source, so a name
a future driver adds is covered too): whatever a call does, the next call still runs, with the
state the docs promise kept and nothing else carried over.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path
from typing import Any

import anyio
import pytest
from mcp.client import Client
from tests.integration.test_mcp_server import _params
from tests.integration.test_mcp_sessions import NODE, PY, SH, calls, ok

pytestmark = pytest.mark.usefixtures("offline_set")

MCP_DIR = Path(__file__).resolve().parents[2] / "src" / "nixcell" / "mcp"

# -- node: no name of the driver's in the user's scope ----------------------------------------

RESERVED_LINES = (
    "await break case catch class const continue debugger default delete do else enum export",
    "extends false finally for function if implements import in instanceof interface let new",
    "null package private protected public return static super switch this throw true try",
    "typeof var void while with yield undefined NaN Infinity eval arguments async of get set",
    "target meta",
)
JS_RESERVED = {word for line in RESERVED_LINES for word in line.split()}


def driver_identifiers() -> list[str]:
    """Every identifier-like word of agent_node.js (code, comments, strings: more is safer)."""
    source = (MCP_DIR / "agent_node.js").read_text()
    words = set(re.findall(r"[A-Za-z_$][\w$]*", source))
    return sorted(words - JS_RESERVED)


def test_the_identifier_list_is_derived_from_the_driver():
    names = driver_identifiers()
    for name in ("fs", "compile", "report", "pending", "emit", "runCall", "loader", "require"):
        assert name in names or name == "fs"  # `fs` is a name the old driver had
    assert len(names) > 60


DECLARE = {
    "let": ("let {n} = 42", "if ({n} !== 42) throw 1"),
    "const": ("const {n} = 42", "if ({n} !== 42) throw 1"),
    "var": ("var {n} = 42", "if ({n} !== 42) throw 1"),
    "function": ("function {n}() {{ return 42 }}", "if ({n}() !== 42) throw 1"),
    "class": ("class {n} {{ static v = 42 }}", "if ({n}.v !== 42) throw 1"),
    "await": ("const {n} = await 42", "if ({n} !== 42) throw 1"),
}


@pytest.mark.parametrize("form", sorted(DECLARE))
def test_node_any_name_the_user_declares_neither_breaks_the_driver_nor_is_broken(form):
    declare, check = DECLARE[form]
    names = sorted({*driver_identifiers(), "fs", "util", "net", "vm", "run", "pump"})
    # Shadowing the language's own Object breaks node's bundled parser (top-level await), and
    # more of node itself, not only this driver: the one name left out.
    names.remove("Object")
    codes = []
    for name in names:
        codes += [declare.format(n=name), check.format(n=name)]
    codes += ["throw 7", "await null; 0"]  # the driver still reports, still awaits
    results = calls(NODE, *codes, timeout=20)
    for name, declared, checked in zip(names, results[0::2], results[1::2], strict=False):
        assert (declared.exit_code, declared.stderr) == (0, ""), (name, declared)
        assert (checked.exit_code, checked.stderr) == (0, ""), (name, checked)
    thrown, awaited = results[-2:]
    assert thrown.exit_code == 1 and "Uncaught 7" in thrown.stderr, thrown
    assert awaited.exit_code == 0 and awaited.stderr == "", awaited


def test_node_session_globals_are_a_plain_node_scripts():
    """Nothing of the driver's in the global scope: no global name that `node -e` (which has
    require, module, exports, __filename, __dirname too, and the builtin modules) lacks, run by
    the same node binary; none of the driver's own names reachable."""
    names = "Object.getOwnPropertyNames(globalThis)"
    lexical = "typeof Script + typeof writeSync + typeof emit + typeof current + typeof calls"
    code = (
        f"const mine = {names}, lex = {lexical};\n"
        "const plain = require('child_process').execFileSync(process.execPath, "
        f"['-e', 'console.log(JSON.stringify({names}))']).toString();\n"
        "console.log(JSON.stringify(mine.filter((n) => !JSON.parse(plain).includes(n))), lex)"
    )
    result = calls(NODE, code)[0]
    assert ok(result).stdout == "[] " + "undefined" * 5 + "\n", result.stdout


@pytest.mark.parametrize(
    "override",
    [
        "globalThis.JSON = 42",
        "Promise = 42",
        "setTimeout = setImmediate = 42",
        "Symbol = 42",
        "Object.defineProperty(process, 'stdout', { value: 42 }); process.stderr.write = null",
        "Object.defineProperty(globalThis, 'process', { value: 42 })",
        "Error = SyntaxError = 42",
        "Reflect = Buffer = Number = 42",
        "require('vm').Script = require('fs').writeSync = 42",
        "process.removeAllListeners('SIGINT')",
    ],
)
def test_node_overridden_globals_do_not_reach_the_driver(override):
    results = calls(NODE, "var kept = 1", override, "throw new RangeError('r')", "kept", "x y")
    assert ok(results[1]).stderr == ""
    thrown, after, syntax = results[2:]
    assert thrown.exit_code == 1 and "RangeError: r" in thrown.stderr, thrown
    assert after.exit_code == 0, after
    assert syntax.exit_code == 1 and "SyntaxError" in syntax.stderr, syntax


def test_node_top_level_await_keeps_declarations_and_scripts_see_script_globals():
    results = calls(
        NODE,
        "const fs = require('fs'); function compile() { return 'mine' }",
        "const x = await Promise.resolve(3); let { a, b: [c] } = await Promise.resolve("
        "{ a: 1, b: [2] }); async function later() { return 5 }; class K {}",
        "console.log(x, a, c, await later(), typeof K, compile(), typeof fs.readFileSync)",
        "const m = await import('fs'); console.log(typeof m.readFileSync)",
        "console.log(typeof module, module.exports === exports, require.resolve('fs'), "
        "__filename, __dirname, process.argv.length, require.main === module)",
    )
    assert [r.stderr for r in results] == [""] * 5  # no ExperimentalWarning, no error
    assert ok(results[2]).stdout == "3 1 2 5 function mine function\n"
    assert ok(results[3]).stdout == "function\n"
    assert ok(results[4]).stdout == ("object true fs /workspace/[session] /workspace 1 true\n")


# -- bash: each call's options apply to it alone ----------------------------------------------

BASH_SETUP = (
    "v=1; cd /tmp; f() { echo fn; }; alias al='echo alias'; export E=e; declare -A m=([k]=x)"
)
BASH_CHECK = (
    'echo "$v $PWD $E ${m[k]} w=${w-} $-"; f; al; trap -p; shopt -s | wc -l; '
    'printf "%q\\n" "$IFS"; ulimit -n; [ -t 1 ] || echo notty; echo "${undefined-}ok"'
)


@pytest.mark.parametrize(
    ("poison", "status"),
    [
        ("w=2; set -e; false; w=3", 1),
        ("w=2; set -u; echo $undefined; w=3", 1),
        ("w=2; set -o pipefail; false | true", 1),
        ("w=2; set -euo pipefail; cd /; false", 1),
        ("w=2; set -x", 0),
        ("w=2; set -v -o noclobber -f -o posix", 0),
        ("w=2; trap 'exit 3' ERR; false; w=3", 3),
        ("w=2; trap 'exit' DEBUG; w=3", 0),
        ("w=2; trap 'exit 4' RETURN; g() { :; }; g", 0),  # bash: g does not inherit it
        ("w=2; trap 'exit 4' RETURN; g() { :; }; declare -ft g; g; w=3", 4),
        ("w=2; trap 'exit' EXIT", 0),
        ("trap 'echo cleanup >&2' EXIT; set -e; w=2; false; w=3", 1),  # a script's cleanup
        ("trap 'exit 6' EXIT; w=2; exit 4", 6),
        ("w=2; trap '' INT TERM; trap 'echo int' INT", 0),
        ("w=2; shopt -s globstar nullglob failglob extglob; shopt -u expand_aliases", 0),
        ("w=2; IFS=,", 0),
        ("w=2; exec >/dev/null 2>&1; echo gone", 0),
        ("w=2; exec 3>/tmp/fd3; exec 0</dev/zero", 0),
        ("w=2; ulimit -n 64; ulimit -S -s 1024; ulimit -H -c 0", 0),
        ("w=2; exit 5", 5),
        ("w=2; exec true", 0),
        ("w=2; set -- a b c; shift 2", 0),
        ("w=2; printf() { :; }; declare() { :; }; trap() { :; }; cd() { :; }", 0),
    ],
)
def test_bash_options_and_traps_of_one_call_do_not_reach_the_next(poison, status):
    codes = (BASH_SETUP, BASH_CHECK, poison, BASH_CHECK, BASH_CHECK)
    baseline, poisoned, check, again = calls(SH, *codes)[1:]
    assert poisoned.exit_code == status, poisoned
    assert "exit" not in poisoned.stderr.splitlines(), poisoned
    assert "tcsetattr" not in poisoned.stderr + baseline.stderr
    assert not poisoned.state_lost and poisoned.notice is None
    expected = ok(baseline).stdout.replace("w= ", "w=2 ")
    if "cd /;" in poison:
        expected = expected.replace(" /tmp ", " / ", 1)
    if "exec true" in poison:  # exec'd: the subshell never saved its state
        expected = baseline.stdout
    if "printf()" in poison:  # the call's own functions persist, as functions do
        assert check.stdout.startswith(expected.split("\n")[0])
        return
    assert (ok(check).stdout, check.stderr) == (expected, ""), poison
    assert again.stdout == expected  # and the call after that


def test_bash_exit_reports_its_status_and_the_session_lives_on():
    results = calls(SH, "x=kept", "echo bye; exit 5", "echo $x", "kill -TERM $$", "echo ${x-lost}")
    exited = results[1]
    assert (exited.exit_code, exited.stdout, exited.stderr) == (5, "bye\n", "")
    assert not exited.state_lost and exited.notice is None
    assert ok(results[2]).stdout == "kept\n"
    killed = results[3]  # the driver's own shell, killed: a fresh one, said so
    assert killed.state_lost and "SIGTERM" in (killed.notice or "")
    assert "restarted: state lost" in (results[4].notice or "")
    assert ok(results[4]).stdout == "lost\n"


NASTY = [
    "",
    " ",
    "a\nb",
    "it's",
    '"q"',
    "$HOME `id` $(id)",
    "\\",
    "\t\r\x01\x7f",
    "declare -- x=1\n#nixcell-end-of-variables\nalias x=y",
    "é€😀",
    "*",
    "-n",
    "--",
]


def test_bash_state_round_trips_any_value_name_and_function():
    setup = []
    for i, value in enumerate(NASTY):
        setup.append(f"s{i}={shlex.quote(value)}; a{i}=({shlex.quote(value)} x); export e{i}=$s{i}")
    setup.append("declare -i n=7; declare -r ro=1; declare -n ref=s1; declare -l low=ABC")
    setup.append("my-fn() { cat <<'EOF'\n$not expanded\nEOF\n}; f.x() { echo dot; }; unset HOME")
    check = [f'printf "%s|%s|%s\\0" "$s{i}" "${{a{i}[0]}}" "$e{i}"' for i in range(len(NASTY))]
    check.append('printf "%s\\0" "$n $ro $ref $low ${HOME-unset}" "$(my-fn; f.x)"')
    results = calls(SH, "\n".join(setup), "\n".join(check))
    ok(results[0])
    fields = ok(results[1]).stdout.split("\0")
    for i, value in enumerate(NASTY):
        assert fields[i] == f"{value}|{value}|{value}", (i, value)
    assert fields[len(NASTY)] == f"7 1 {NASTY[1]} abc unset"
    assert fields[len(NASTY) + 1] == "$not expanded\ndot"


def test_bash_errors_name_the_codes_own_lines():
    result = calls(SH, "true\nnosuchcmd")[0]
    assert result.stderr == "bash: line 2: nosuchcmd: command not found\n"


# -- python: no exception, exit or stream trick ends the interpreter -------------------------


@pytest.mark.parametrize(
    ("code", "status", "stderr"),
    [
        ("def f(): f()\nf()", 1, "RecursionError"),
        ("import sys; sys.setrecursionlimit(10**6)\ndef f(): f()\nf()", 1, "RecursionError"),
        ("import sys; sys.setrecursionlimit(40)\ndef f(): f()\nf()", 1, "RecursionError"),
        ("class E(Exception):\n  def __str__(self): raise ValueError\nraise E", 1, "str() failed"),
        ("raise ValueError('m' * 10**7)", 1, "characters ..."),
        ("raise KeyboardInterrupt", 130, "KeyboardInterrupt"),
        ("class B(BaseException): pass\nraise B('b')", 1, "B: b"),
        ("raise GeneratorExit", 1, "GeneratorExit"),
        ("import sys; sys.exit(3)", 3, ""),
        ("import sys; sys.exit(256 + 4)", 4, ""),
        ("import sys; sys.exit('bye')", 1, "bye"),
        ("raise SystemExit", 0, ""),
        ("import io, sys; sys.stdout = io.StringIO(); sys.stderr = None; 1 / 0", 1, "Zero"),
        ("import sys; sys.stdout.close(); sys.stderr.close()", 0, ""),
        ("import sys; sys.tracebacklimit = 'x'; 1 / 0", 1, "ZeroDivisionError"),
        ("e = ValueError('c'); e.__context__ = e; raise e", 1, "ValueError: c"),
        ("print('x' * (3 << 20))", 0, ""),
    ],
)
def test_python_odd_exceptions_exits_and_streams_keep_the_session(code, status, stderr):
    results = calls(PY, "x = 'kept'", code, "print(x)", timeout=60)
    odd, after = results[1], results[2]
    assert (odd.exit_code, odd.timed_out, odd.state_lost) == (status, False, False), odd
    assert stderr in odd.stderr and (stderr or odd.stderr == ""), odd.stderr[-2000:]
    assert "agent_python" not in odd.stderr
    assert (ok(after).stdout, after.stderr, after.notice) == ("kept\n", "", None)


@pytest.mark.parametrize(
    "code",
    [
        "class L(Exception):\n  def __str__(self):\n    while True: pass\nraise L",
        "class R:\n  def __repr__(self):\n    while True: pass\nprint(repr(R()))",
        "import sys\nclass S:\n  def write(self, s): pass\n  def flush(self):\n"
        "    while True: pass\nsys.stdout = S()",
    ],
)
def test_python_code_that_loops_while_reported_or_flushed_is_interrupted(code):
    results = calls(PY, "x = 'kept'", code, "print(x)", timeout=2)
    assert results[1].timed_out and not results[1].state_lost, results[1]
    assert ok(results[2]).stdout == "kept\n"


# -- exit ends the call, not the session ------------------------------------------------------


@pytest.mark.parametrize(
    ("env_", "setup", "code", "status", "check"),
    [
        (SH, "x=kept", "echo out; exit 5", 5, "echo $x"),
        (PY, "x = 'kept'", "print('out'); import sys; sys.exit(5)", 5, "print(x)"),
        (NODE, "var x = 'kept'", "console.log('out'); process.exit(5)", 5, "console.log(x)"),
        (
            NODE,
            "var x = 'kept'",
            "console.log('out'); setTimeout(() => process.exit(5), 9); await new Promise(() => {})",
            5,
            "console.log(x)",
        ),
    ],
)
def test_exit_ends_the_call_not_the_session(env_, setup, code, status, check):
    results = calls(env_, setup, code, check)
    exited = results[1]
    assert (exited.exit_code, exited.stdout, exited.stderr) == (status, "out\n", ""), exited
    assert not exited.state_lost and exited.notice is None
    assert (ok(results[2]).stdout, results[2].notice) == ("kept\n", None)


# -- through the real MCP client -------------------------------------------------------------


def test_through_the_mcp_client(offline_set, tmp_path: Path):
    project = tmp_path / "project"
    project.mkdir()
    (tmp_path / "xdg").mkdir()

    def run(code: str, env: str, session: str = "s") -> dict[str, Any]:
        return {"code": code, "env": env, "session": session}

    async def body(client: Client) -> list[Any]:
        steps = [
            run("x = 1", "python"),
            run("echo hi", "shell"),  # "s" is python's
            run("def f(): f()", "python"),
            run("f()", "python"),
            run("print(x)", "python"),
            run("set -euo pipefail; trap 'exit' ERR; y=2; exit 5", "shell", "b"),
            run("echo $y $-", "shell", "b"),
            run("const fs = require('fs'); function compile() {}", "node", "n"),
            run(
                "const v = await Promise.resolve(typeof fs.readFileSync); console.log(v)",
                "node",
                "n",
            ),
            run("console.log(v, typeof compile)", "node", "n"),
        ]
        return [await client.call_tool("run", step) for step in steps]

    async def main() -> list[Any]:
        async with Client(_params(project)) as client:
            return await body(client)

    results = anyio.run(main)
    text = [r.content[0].text for r in results]
    wrong = text[1]
    assert results[1].is_error and wrong.count("session 's'") == 1, wrong
    assert "belongs to environment 'python', not 'shell'" in wrong
    assert results[3].is_error and "RecursionError" in text[3]
    assert results[4].structured_content["stdout"] == "1\n"
    assert results[5].structured_content["exit_code"] == 5, text[5]
    assert results[5].structured_content["stderr"] == ""
    assert results[6].structured_content["stdout"] == "2 hBc\n", text[6]
    assert [r.is_error for r in results[7:]] == [False] * 3, text[7:]
    assert results[9].structured_content["stdout"] == "function function\n"

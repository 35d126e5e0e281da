"""`nixcell shell` on a real PTY (pexpect): the prompt, where it starts, a command, the exit
code, a project with sh only, --debug, and the refusals."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pexpect
import pytest
from tests.conftest import NIXCELL
from tests.integration.test_project_cmds import _in, _init

PROMPT = r"\(cell\) (\S+)\$ "


def _shell(cwd: Path, *args: str, timeout: float = 120) -> pexpect.spawn:
    return pexpect.spawn(
        NIXCELL, ["shell", *args], cwd=str(cwd), env={**os.environ, "TERM": "xterm"},
        encoding="utf-8", codec_errors="replace", timeout=timeout,
        dimensions=(24, 250),  # a long tmp path in the prompt must not wrap (readline's \r)
    )  # fmt: skip


def test_shell_on_a_real_pty(tmp_path: Path, offline_set) -> None:
    root = _init(tmp_path / "proj", "shell")
    (root / "src").mkdir()
    child = _shell(root / "src")
    child.expect(PROMPT)
    assert child.match.group(1) == str(root / "src")  # where the user stands
    child.sendline("echo $((6*7)) > answer; cat answer; [ -t 0 ] && [ -t 1 ] && echo on-a-tty")
    child.expect("42")
    child.expect("on-a-tty")
    child.expect(PROMPT)
    child.sendline("exit 3")
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 3
    assert (root / "src/answer").read_text() == "42\n"  # standard: the project is writable


def test_shell_of_a_named_directory_with_sh_only(tmp_path: Path, offline_set) -> None:
    root = tmp_path / "bare"
    root.mkdir()
    (root / "nixcell.toml").write_text('[nix]\npackages = ["coreutils"]\n')
    child = _shell(tmp_path, str(root))
    child.expect(r"\(cell\) \$ ")
    child.sendline("echo dash-$((1+1)); exit")
    child.expect("dash-2")
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 0


@pytest.mark.parametrize("packages", ['"bash"', '"coreutils"'])
@pytest.mark.parametrize("prompt", ["READY> ", "it's {a} ; echo no > "])
def test_shell_keeps_the_configs_prompt(tmp_path: Path, offline_set, packages, prompt) -> None:
    """A PS1 in [cage] env is the prompt, with bash (which drops an inherited PS1 when it starts
    non-interactive, as /bin/sh -c) and with sh; quotes, braces and ';' in it stay text."""
    root = tmp_path / "p"
    root.mkdir()
    (root / "nixcell.toml").write_text(
        f'[nix]\npackages = [{packages}]\n[cage]\nenv = {{ PS1 = "{prompt}" }}\n'
    )
    child = _shell(root)
    child.expect_exact(prompt)
    child.sendline("exit 5")
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 5


def test_shell_first_prompt_warm(tmp_path: Path, offline_set) -> None:
    """The warm time to the first prompt, printed for docs/benchmarks.md (not asserted)."""
    root = _init(tmp_path / "proj", "shell")
    times = []
    for _ in range(4):
        start = time.monotonic()
        child = _shell(root)
        child.expect(PROMPT)
        times.append(time.monotonic() - start)
        child.sendline("exit")
        child.expect(pexpect.EOF)
        child.close()
    print(f"shell first prompt, warm: {min(times[1:]) * 1000:.0f} ms (runs {times})")


@pytest.mark.parametrize(
    "args, message",
    [
        (["-T"], "a shell always gets a terminal"),
        (["--no-project"], "shell opens a project's cell"),
    ],
)
def test_shell_refusals_are_one_line(tmp_path: Path, args, message) -> None:
    root = _init(tmp_path / "proj", "shell")
    proc = _in(root, "shell", *args)
    assert proc.returncode == 2
    assert message in proc.stderr.decode() and proc.stderr.count(b"\n") == 1


def test_shell_outside_a_project_is_one_line(tmp_path: Path) -> None:
    proc = _in(tmp_path, "shell")
    assert proc.returncode == 2
    assert proc.stderr.decode().startswith("nixcell: no nixcell.toml")


def test_shell_debug_lists_what_the_cell_was_denied(tmp_path: Path, offline_set) -> None:
    root = _init(tmp_path / "proj", "shell")
    child = _shell(root, "--debug")
    child.expect(PROMPT)
    child.sendline("cat /etc/nixcell-missing-file; exit 2")
    child.expect(r"Sandbox access failures \(\d+ unique, \d+ total\)")
    child.expect(r"ENOENT\s+openat\s+/etc/nixcell-missing-file")
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 2

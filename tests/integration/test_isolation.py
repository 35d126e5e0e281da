"""What a cell can see and touch: only its closure, its tmpfs areas and /workspace."""

from __future__ import annotations

import os
import shutil
import stat
from pathlib import Path

import pytest


def out(result) -> str:
    return result.stdout.decode(errors="replace")


def test_echo_hi(cell):
    result = cell(["echo", "hi"])
    assert (result.exit_code, result.stdout, result.stderr) == (0, b"hi\n", b"")


def test_host_files_are_not_readable(cell, tmp_path):
    secret = Path("/root/nixcell-test-secret")
    secret.write_text("host secret\n")
    try:
        result = cell(
            "for f in /etc/shadow /root/nixcell-test-secret /usr/lib/os-release /etc/os-release;"
            " do cat $f 2>/dev/null && echo LEAK:$f; done; ls /usr/lib 2>&1; true"
        )
    finally:
        secret.unlink()
    assert "LEAK" not in out(result)
    assert "host secret" not in out(result)


def test_only_planned_top_level_entries_exist(cell):
    result = cell("ls -A /; echo ---; ls -A /usr 2>&1; echo ---; ls -A /bin /lib /lib64 2>&1; true")
    top, usr, bins = out(result).split("---\n")
    assert set(top.split()) == {
        "bin",
        "dev",
        "etc",
        "home",
        "nix",
        "proc",
        "tmp",
        "usr",
        "workspace",
    }
    assert usr.split() == ["bin"]  # only the /usr/bin/env link lives there
    assert "sh" in bins and "No such file" in bins  # /bin/sh exists; /lib and /lib64 do not
    links = cell("readlink /bin/sh /usr/bin/env")
    assert all(line.startswith("/nix/store/") for line in out(links).split())


def test_store_shows_exactly_the_closure(cell, offline_set):
    from nixcell.nix.resolve import resolve

    closure = resolve(["bash", "coreutils", "gnugrep"], None)
    result = cell("ls -A /nix/store; echo ---; ls -A /nix")
    store, nix = out(result).split("---\n")
    visible = {f"/nix/store/{name}" for name in store.split()}
    assert visible == set(closure.paths)
    assert nix.split() == ["store"]
    other = offline_set.packages["python3"]
    assert other not in visible


def test_writes_outside_workspace_and_tmp_fail(cell):
    script = (
        "for p in /x /etc/x /nix/store/x /usr/x /bin/x /proc/x; do "
        "  (echo data > $p) 2>/dev/null && echo WROTE:$p; done; "
        "for p in /tmp/ok /workspace/ok $HOME/ok; do echo data > $p || echo FAILED:$p; done; "
        "touch /etc/passwd 2>/dev/null && echo WROTE:passwd; echo done"
    )
    result = cell(script)
    assert "WROTE" not in out(result)
    assert "FAILED" not in out(result)
    assert out(result).endswith("done\n")


def test_planted_links_in_workspace_cannot_reach_the_host(cell, tmp_path):
    secret = tmp_path / "outside.txt"
    secret.write_text("outside secret\n")
    work = tmp_path / "work"
    work.mkdir()
    (work / "sym").symlink_to(secret)
    (work / "etc-shadow").symlink_to("/etc/shadow")
    (work / "up").symlink_to("../outside.txt")
    script = (
        "cat sym etc-shadow up 2>/dev/null && echo LEAK; "
        "echo overwrite > sym 2>/dev/null; echo overwrite > up 2>/dev/null; "
        "ln -s /etc/shadow mine && cat mine 2>/dev/null && echo LEAK2; "
        "ln /etc/passwd hard 2>/dev/null && echo LINKED; "
        "ln /proc/self/root/etc/passwd hard2 2>/dev/null && echo LINKED2; echo done"
    )
    result = cell(script, workdir=str(work))
    assert "LEAK" not in out(result)
    assert "outside secret" not in out(result)
    assert "LINKED" not in out(result)
    assert secret.read_text() == "outside secret\n"
    # the link the cell made points at its own view; on the host it must not have become
    # anything but a symlink
    assert (work / "mine").is_symlink()


def test_pid_namespace_hides_host_processes(cell):
    result = cell("cat /proc/1/cmdline | tr '\\0' ' '; echo; ls /proc | grep -c '^[0-9]'")
    cmdline, count = out(result).splitlines()
    host_init = Path("/proc/1/cmdline").read_bytes().replace(b"\0", b" ").decode()
    assert cmdline.strip() != host_init.strip()
    assert int(count) < 10
    mine = cell(
        f"test -e /proc/{os.getpid()}/cmdline && grep -a pytest /proc/{os.getpid()}/cmdline"
        " && echo VISIBLE; true"
    )
    assert "VISIBLE" not in out(mine)


def test_only_loopback_exists(cell):
    result = cell("tail -n +3 /proc/net/dev | cut -d: -f1 | tr -d ' '")
    assert out(result).split() == ["lo"]


def test_capabilities_are_empty(cell):
    result = cell("grep -E '^Cap(Inh|Prm|Eff|Bnd|Amb)' /proc/self/status")
    caps = dict(line.split(":\t") for line in out(result).splitlines())
    assert len(caps) == 5
    assert all(int(v, 16) == 0 for v in caps.values()), caps


def test_identity_and_environment(cell):
    result = cell(
        "id -u; id -g; uname -n; echo $HOME $USER $TMPDIR $LANG; pwd; env | sort",
        env={"FOO": "bar"},
    )
    lines = out(result).splitlines()
    assert lines[:5] == ["1000", "1000", "cell", "/home/cell cell /tmp C.UTF-8", "/workspace"]
    env = dict(line.split("=", 1) for line in lines[5:])
    assert env["FOO"] == "bar"
    assert set(env) <= {
        "PATH",
        "HOME",
        "USER",
        "LOGNAME",
        "TERM",
        "LANG",
        "TMPDIR",
        "SHELL",
        "FOO",
        "PWD",
        "SHLVL",
        "_",
        "OLDPWD",
    }


def test_setuid_copy_does_not_raise_privileges(cell, tmp_path, offline_set):
    work = tmp_path / "w"
    work.mkdir()
    busybox = Path(offline_set.packages["busybox"]) / "bin" / "busybox"  # static: runs anywhere
    for applet in ("id", "cat"):  # busybox picks its applet from argv[0]
        planted = work / applet
        shutil.copy(busybox, planted)
        os.chown(planted, 0, 0)
        planted.chmod(0o4755)
    result = cell(
        "./id -u; ./cat /proc/self/status | grep ^Uid; "
        "cp ./id mine && chmod u+s mine && echo SETUID-SET; "
        "chmod g+s mine && echo SETGID-SET; chmod 755 mine && echo plain-ok",
        workdir=str(work),
    )
    lines = out(result).splitlines()
    assert lines[0] == "1000"
    assert lines[1].split()[1:] == ["1000"] * 4
    assert "SETUID-SET" not in lines and "SETGID-SET" not in lines
    assert "plain-ok" in lines
    assert not (work / "mine").stat().st_mode & (stat.S_ISUID | stat.S_ISGID)


def test_hide_and_read_only_binds(cell, tmp_path):
    data = tmp_path / "data"
    (data / "private").mkdir(parents=True)
    (data / "private" / "key").write_text("k")
    (data / "token.txt").write_text("t")
    (data / "public.txt").write_text("p")
    result = cell(
        "cat /data/public.txt; echo; cat /data/token.txt 2>/dev/null && echo LEAK; "
        "ls /data/private 2>&1 | grep -c key; echo x > /data/new 2>/dev/null && echo WROTE; true",
        mounts=[{"source": str(data), "target": "/data"}],
        hide=["/data/private", str(data / "token.txt")],
    )
    lines = out(result).splitlines()
    assert lines[0] == "p"
    assert "LEAK" not in lines and "WROTE" not in lines
    assert lines[1] == "0"


def test_bind_is_writable_and_workdir_persists(cell, tmp_path):
    target = tmp_path / "rw"
    target.mkdir()
    cell(
        "echo hello > /out/file; echo ws > /workspace/w",
        workdir=str(tmp_path),
        mounts=[{"source": str(target), "target": "/out", "writable": True}],
    )
    assert (target / "file").read_text() == "hello\n"
    assert (tmp_path / "w").read_text() == "ws\n"


@pytest.mark.parametrize("code", [0, 1, 7, 255])
def test_exit_code_passes_through(cell, code):
    assert cell(f"exit {code}").exit_code == code


def test_signal_exit_is_128_plus_n(cell):
    assert cell("kill -TERM $$").exit_code == 143
    assert cell("kill -KILL $$").exit_code == 137


def test_stdin_passes_through(cell):
    result = cell(["cat"], input=b"line one\nline two")
    assert result.stdout == b"line one\nline two"

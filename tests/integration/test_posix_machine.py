"""The rest of "a small but real POSIX machine": what ordinary programs assume of the machine
they run on, checked by running them in real cells through the real CLI (docs/security.md and
README "What a cell looks like"). Each row: packages, the program, what it must print."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from tests.conftest import cli

pytestmark = pytest.mark.integration

PY = ("-p", "python3")
NODE = ("-p", "nodejs")

PY_MACHINE = r"""
import locale, os, pwd, socket, sys, tempfile
me = pwd.getpwuid(os.getuid())
print(me.pw_name, me.pw_dir == os.environ["HOME"], me.pw_shell == os.environ["SHELL"])
print(socket.gethostname(), os.uname().nodename)
print(locale.getpreferredencoding(), sys.getfilesystemencoding())
open("/tmp/é€ ü.txt", "w").close(); print(sorted(os.listdir("/tmp")))
print(sorted({a[4][0] for a in socket.getaddrinfo("localhost", 80, 0, socket.SOCK_STREAM)}))
fd, name = tempfile.mkstemp(); print(name.startswith("/tmp/"), tempfile.gettempdir())
print(os.cpu_count() == len(os.sched_getaffinity(0)))
import subprocess
print(subprocess.run(["env"], capture_output=True, text=True).stdout.count("HOME=/home/cell"))
"""

NODE_MACHINE = r"""
const c = require("child_process"), os = require("os");
require("dns").lookup("localhost", { all: true }, (e, a) => {
  console.log(e, a.map((x) => x.address).sort().join(","));
  console.log(os.userInfo().username, os.userInfo().homedir === os.homedir(), os.hostname());
  const p = c.spawn("echo spawned-by-$0; exit 4", { shell: true, stdio: "inherit" });
  p.on("exit", (code) => console.log("exit", code));
});
"""

SH_DEVICES = (
    "read a; echo got-$a; ls /dev/fd/ >/dev/null && echo fd;"
    "(echo x > /dev/tty) 2>/dev/null || echo no-tty-$?;"  # no terminal: ENXIO, like setsid
    "ulimit -n; t=$(mktemp); test -f $t && echo mktemp-ok; env -i A=1 env"
)

CASES = {
    "python: identity, hostname, UTF-8, localhost v4+v6, tempfile, env": (
        PY, ("python3", "-c", PY_MACHINE), b"",
        "cell True True\ncell cell\nutf-8 utf-8\n['é€ ü.txt']\n['127.0.0.1', '::1']\n"
        "True /tmp\nTrue\n1\n",
    ),
    "node: dns localhost, userInfo, spawn shell:true": (
        NODE, ("node", "-e", NODE_MACHINE), b"",
        "null 127.0.0.1,::1\ncell true cell\nspawned-by-/bin/sh\nexit 4\n",
    ),
    "coreutils sh: /dev/stdin, /dev/fd, /dev/tty, ulimit, mktemp, env": (
        ("-p", "coreutils"), ("sh", "-c", SH_DEVICES), b"in\n",
        "got-in\nfd\nno-tty-2\n20000\nmktemp-ok\nA=1\n",
    ),
    "coreutils: id, whoami, uname": (
        ("-p", "coreutils"), ("sh", "-c", "id; whoami; uname -n"), b"",
        "uid=1000(cell) gid=1000(cell) groups=1000(cell)\ncell\ncell\n",
    ),
    "python: env by name and #!/usr/bin/env without coreutils": (
        PY, ("sh", "-c", "env -i A=1 env; command -v env; /usr/bin/env -u HOME B=2 python3 -c "
             "'import os; print(os.environ[\"B\"], \"HOME\" in os.environ)'"), b"",
        "A=1\n/usr/bin/env\n2 False\n",
    ),
    "bash: /usr/bin/env without coreutils": (
        ("-p", "bash"), ("bash", "-c", "/usr/bin/env -i X=1 /usr/bin/env"), b"", "X=1\n",
    ),
}  # fmt: skip


@pytest.mark.parametrize("name", list(CASES))
def test_what_programs_assume_of_the_machine(offline_set, name):
    packages, command, stdin, expected = CASES[name]
    result = cli("run", "-T", *packages, "--", *command, input=stdin)
    assert result.returncode == 0, result.stderr.decode()
    got = result.stdout.decode()
    if "20000" in expected:  # the host's own limit, whatever it is
        expected = expected.replace("20000", str(_nofile()))
    assert got == expected


def _nofile() -> int:
    import resource

    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def _write(path: Path, text: str, mode: int = 0o644) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    path.chmod(mode)


def test_env_shebang_scripts_run_under_python_and_node(offline_set, tmp_path):
    """The scripts pip and npm install: `#!/usr/bin/env python3`, `#!/usr/bin/env node`, and
    npx of a locally installed package's bin, in cells without coreutils."""
    _write(tmp_path / "s.py", "#!/usr/bin/env python3\nimport sys; print('py', sys.argv[1])\n",
           0o755)  # fmt: skip
    mod = tmp_path / "node_modules"
    _write(mod / "hello/package.json", json.dumps({"name": "hello", "version": "1.0.0",
                                                   "bin": {"hello": "bin/hello.js"}}))  # fmt: skip
    _write(
        mod / "hello/bin/hello.js",
        "#!/usr/bin/env node\nconsole.log('npx', process.argv.slice(2).join(' '))\n",
        0o755,
    )
    (mod / ".bin").mkdir()
    os.symlink("../hello/bin/hello.js", mod / ".bin/hello")
    _write(tmp_path / "package.json", json.dumps({"name": "w", "version": "1.0.0",
           "scripts": {"t": "hello from-script && echo script-ok"}}))  # fmt: skip
    runs = {
        ("-p", "python3", "--", "./s.py", "a"): "py a\n",
        ("-p", "nodejs", "--", "npx", "--offline", "hello", "b"): "npx b\n",
        ("-p", "nodejs", "--", "npm", "run", "-s", "t"): "npx from-script\nscript-ok\n",
    }
    for args, expected in runs.items():
        result = cli("run", "-T", "--workdir", str(tmp_path), *args)
        assert (result.returncode, result.stdout.decode()) == (0, expected), result.stderr


VENV = r"""
import pathlib, subprocess, sys
src = pathlib.Path("/tmp/src"); (src / "hello").mkdir(parents=True)
(src / "hello/__init__.py").write_text("def main():\n    print('console-script')\n")
(src / "setup.py").write_text("from setuptools import setup\nsetup(name='hello', "
    "version='1', packages=['hello'], entry_points={'console_scripts': ['hello=hello:main']})\n")
subprocess.run([sys.executable, "-m", "venv", "/tmp/v"], check=True)
subprocess.run(["/tmp/v/bin/pip", "install", "-q", "--no-index", "--no-build-isolation",
                "--disable-pip-version-check", str(src)], check=True)
subprocess.run(["/tmp/v/bin/hello"], check=True)
"""


def test_python_venv_then_its_console_script(offline_set):
    result = cli("run", "-T", "-p", "python3", "--", "python3", "-c", VENV)
    assert result.returncode == 0, result.stderr.decode()
    assert result.stdout.decode().splitlines()[-1] == "console-script"


def test_git_hooks_and_make_style_shell(offline_set):
    """git runs hooks (`#!/bin/sh`, `#!/usr/bin/env sh`; their output on stderr) and
    make-style `$(SHELL) -c`."""
    script = (
        "set -e; git init -q /tmp/r; cd /tmp/r;"
        "printf '#!/bin/sh\\necho pre-commit-ran\\n' > .git/hooks/pre-commit;"
        "printf '#!/usr/bin/env sh\\necho post-commit-ran\\n' > .git/hooks/post-commit;"
        "chmod +x .git/hooks/pre-commit .git/hooks/post-commit;"
        "git -c user.name=a -c user.email=a@b.test commit -q --allow-empty -m m 2>&1;"
        "\"$SHELL\" -c 'echo make-style $((2 + 3))'"
    )
    result = cli("run", "-T", "-p", "git", "-p", "coreutils", "--", "sh", "-c", script)
    assert result.returncode == 0, result.stderr.decode()
    assert result.stdout.decode() == "pre-commit-ran\npost-commit-ran\nmake-style 5\n"


def test_no_sh_has_no_env_either_and_coreutils_brings_its_own(offline_set):
    probe = ("python3", "-c", "import os; print(os.path.realpath('/usr/bin/env'))")
    plain = cli("run", "-T", "--no-sh", "-p", "python3", "--", *probe)
    assert plain.stdout.decode() == "/usr/bin/env\n"  # nothing there: realpath leaves it
    own = cli("run", "-T", "-p", "python3", "-p", "coreutils", "--", *probe)
    assert "-coreutils-" in own.stdout.decode()
    busy = cli("run", "-T", "-p", "python3", "--", *probe)
    assert busy.stdout.decode().rstrip().endswith("/bin/busybox")
    plan = json.loads(cli("run", "-p", "python3", "--dry-run", "--json", "--", "true").stdout)
    names = sorted(p.split("-", 1)[1].rsplit("-", 1)[0] for p in plan["closure"])
    assert names == ["busybox", "dash", "glibc", "nixcell", "python3"], names
    assert "/usr/bin" in plan["path_dirs"]


DEVICES = (
    "read a < /dev/stdin; echo got-$a; echo fd > /dev/fd/1; echo out > /dev/stdout;"
    "echo err > /dev/stderr"
)


def test_dev_stdin_stdout_fd_reopen_pipes_and_their_owners_come_back(offline_set):
    """/dev/stdin, /dev/stdout, /dev/fd/N reopen the caller's pipes (a root-run cell has a uid
    of its own: the pipes are lent to it while it runs, sandbox/stdioowner.py); after the run
    each pipe has its owner again. A pipe nixcell made (capture) works the same."""
    import subprocess

    from tests.conftest import NIXCELL

    r_in, w_in = os.pipe()
    r_out, w_out = os.pipe()
    before = [os.fstat(fd)[4:6] for fd in (r_in, r_out)]
    os.write(w_in, b"in\n")
    os.close(w_in)
    argv = [NIXCELL, "run", "-T", "-p", "coreutils", "--", "sh", "-c", DEVICES]
    done = subprocess.run(argv, stdin=r_in, stdout=w_out, stderr=subprocess.PIPE, timeout=120)
    os.close(w_out)
    assert [os.fstat(fd)[4:6] for fd in (r_in, r_out)] == before
    os.close(r_in)
    with os.fdopen(r_out, "rb") as got:
        assert (done.returncode, got.read()) == (0, b"got-in\nfd\nout\n"), done.stderr
    assert done.stderr.endswith(b"err\n")
    py = "import sys; open('/dev/stdout', 'w').write(sys.stdin.read().upper())"
    piped = cli("run", "-T", "-p", "python3", "--", "python3", "-c", py, input=b"abc")
    assert (piped.returncode, piped.stdout) == (0, b"ABC"), piped.stderr


def test_bin_bash_scripts_run_with_bash_and_say_what_is_missing_without(offline_set, tmp_path):
    _write(tmp_path / "b.sh", "#!/bin/bash\necho bash $BASH_VERSINFO\n", 0o755)
    _write(tmp_path / "e.sh", "#!/usr/bin/env bash\necho env-bash\n", 0o755)
    ok = cli("run", "-T", "--workdir", str(tmp_path), "-p", "bash", "--", "./b.sh")
    assert (ok.returncode, ok.stdout) == (0, b"bash 5\n"), ok.stderr
    for script, why in (
        ("./b.sh", "#!/bin/bash, which does not exist in the cell"),
        ("./e.sh", "#!/usr/bin/env bash, and 'bash' is not on the cell's PATH"),
    ):
        bad = cli("run", "-T", "--workdir", str(tmp_path), "-p", "python3", "--", script)
        assert bad.returncode == 127
        assert bad.stderr.decode().splitlines() == [
            f"nixcell: command '{script}' starts with {why}; add the package that provides "
            "bash with -p"
        ], bad.stderr

"""The offline package set, for real: every package runs in a bare bwrap holding only its closure.

The cell here is plain bwrap (not nixcell's runner) on purpose: it proves the store paths are
self-contained whatever the runner adds. ``/usr``, ``/lib`` and ``/etc`` do not exist inside.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from nixcell.nix import offline
from nixcell.nix.offline import elf
from nixcell.nix.offline.stage import GLIBC_SONAMES
from nixcell.nix.offline.store import NO_SUBSTITUTERS

pytestmark = [pytest.mark.integration, pytest.mark.root]

REQUIRED = [
    *("bash", "dash", "coreutils", "busybox", "python3", "nodejs", "curl", "git", "jq"),
    *("gnugrep", "gnused", "gawk", "findutils", "diffutils"),
    *("python3Packages.pyyaml", "python3Packages.numpy"),  # ./setup installs their sources
]
# The only packages allowed a reference beyond themselves and glibc.
EXTRA_REFS = {"which": {"busybox"}}
# Executables staged with their layout kept (Stager.fixed_layout): no RUNPATH, glibc only, found
# through their launcher's LD_LIBRARY_PATH.
FIXED_LAYOUT = {"claude-code": {"libexec/claude-code/claude"}}


@pytest.fixture(scope="session")
def built() -> offline.OfflineSet:
    if os.geteuid() != 0:
        pytest.skip("needs root: single-user nix writes /nix/store")
    for tool in ("nix-build", "nix-store", "bwrap", "patchelf", "ldd"):
        if shutil.which(tool) is None:
            pytest.skip(f"needs {tool}")
    return offline.build()


def closure(path: str) -> list[str]:
    out = subprocess.run(
        ["nix-store", *NO_SUBSTITUTERS, "-qR", path], capture_output=True, text=True, check=True
    )
    return out.stdout.split()


def in_cell(
    pkg: str,
    argv: list[str],
    *,
    binds: tuple[tuple[str, str], ...] = (),
    env: dict[str, str] | None = None,
    input: str | bytes | None = None,
    cwd: str = "/tmp",
) -> subprocess.CompletedProcess[Any]:
    args = ["bwrap", "--unshare-all", "--die-with-parent", "--new-session", "--clearenv"]
    args += ["--proc", "/proc", "--dev", "/dev", "--tmpfs", "/tmp"]
    for p in closure(pkg):
        args += ["--ro-bind", p, p]
    for src, dest in binds:
        args += ["--bind", src, dest]
    for k, v in {"PATH": f"{pkg}/bin", "HOME": "/tmp", **(env or {})}.items():
        args += ["--setenv", k, v]
    args += ["--chdir", cwd, "--", *argv]
    text = not isinstance(input, bytes)
    return subprocess.run(args, capture_output=True, text=text, input=input, timeout=120)


def ok(proc: subprocess.CompletedProcess[Any]) -> str:
    detail = f"stdout: {proc.stdout}\nstderr: {proc.stderr}"
    assert proc.returncode == 0, f"exit {proc.returncode}\n{detail}"
    return proc.stdout


# (package, argv, expected substring of stdout, stdin)
SMOKE = [
    (
        "bash",
        ["bash", "-c", "echo $((6*7)); [ -e /usr/lib ] || [ -e /lib ] || echo no-host"],
        "42\nno-host",
        None,
    ),
    ("bash", ["sh", "-c", "echo via-sh"], "via-sh", None),
    ("dash", ["dash", "-c", "echo $((6*7)) | { read x; echo dash $x; }"], "dash 42", None),
    ("coreutils", ["ls", "-d", "/nix/store"], "/nix/store", None),
    ("coreutils", ["sort"], "a\nb\n", "b\na\n"),
    ("busybox", ["busybox", "echo", "bb"], "bb", None),
    ("busybox", ["sh", "-c", "ls / | wc -l"], "4", None),
    ("curl", ["curl", "-V"], "https", None),
    ("jq", ["jq", "-c", ".a"], "[1,2]", '{"a": [1, 2]}'),
    ("gnugrep", ["grep", "-c", "x"], "2", "x\ny\nxx\n"),
    ("gnugrep", ["egrep", "^(ab)+$"], "abab", "abab\nabc\n"),
    ("gnused", ["sed", "s/o/0/g"], "f00", "foo\n"),
    ("gawk", ["awk", "{ s += $1 } END { print s }"], "6", "1\n2\n3\n"),
    ("findutils", ["find", "/nix", "-maxdepth", "1", "-name", "store"], "/nix/store\n", None),
    ("findutils", ["xargs", "-I{}", "find", "{}", "-maxdepth", "0"], "/nix\n", "/nix\n"),
    ("diffutils", ["diff", "/proc/self/exe", "/proc/self/exe"], "", None),
    ("diffutils", ["diff3", "/proc/self/exe", "/proc/self/exe", "/proc/self/exe"], "", None),
    ("diffutils", ["cmp", "--version"], "GNU diffutils", None),
    ("tree", ["tree", "-L", "1", "/nix"], "store", None),
    ("bc", ["bc"], "1024", "2^10\n"),
    ("gnutar", ["tar", "--version"], "GNU tar", None),
    ("which", ["which", "which"], "/bin/which", None),
    ("nix", ["nix-build", "--version"], "nix-build (Nix)", None),  # (argv[0] picks the tool)
    ("claude-code", ["claude", "--version"], "(Claude Code)", None),
]


@pytest.mark.parametrize(("name", "argv", "expected", "stdin"), SMOKE, ids=lambda v: str(v)[:20])
def test_program_runs_in_its_bare_closure(built, name, argv, expected, stdin):
    if name not in built.packages and name not in REQUIRED:
        pytest.skip(f"{name} is optional and was not built on this host")
    assert name in built.packages, f"required package {name} missing from the offline set"
    out = ok(in_cell(built.packages[name], argv, input=stdin))
    assert expected in out


def test_gzip_and_its_zcat_launcher(built):
    gz = built.packages["gzip"]
    packed = in_cell(gz, ["gzip", "-c"], input=b"payload\n")
    assert packed.returncode == 0, packed.stderr
    unpacked = in_cell(gz, ["zcat"], input=packed.stdout)  # no shell in this closure
    assert unpacked.stdout == b"payload\n", unpacked.stderr


def test_python_stdlib_and_prefix(built):
    py = built.packages["python3"]
    code = (
        "import ssl, sqlite3, json, ctypes, sys, zlib, hashlib, lzma, bz2, readline;"
        "sqlite3.connect(':memory:').execute('select 1');"
        "print(sys.prefix, sys.base_prefix);"
        "print(all(p.startswith('/nix/store/') for p in sys.path if p))"
    )
    out = ok(in_cell(py, ["python3", "-c", code]))
    assert out.split("\n")[0] == f"{py} {py}"
    assert out.split("\n")[1] == "True"


def test_python_venv_with_pip(built):
    py = built.packages["python3"]
    script = (
        "import subprocess, sys;"
        "subprocess.run([sys.executable, '-m', 'venv', '/tmp/v'], check=True);"
        "subprocess.run(['/tmp/v/bin/python', '-m', 'pip', '--version'], check=True)"
    )
    out = ok(in_cell(py, ["python3", "-c", script]))
    assert out.startswith("pip ") and "/tmp/v/" in out
    assert built.packages["python311"] == py


def test_python_daemon_thread_exit(built):
    """Exiting with a blocked daemon thread needs libgcc_s (glibc dlopens it for pthread_exit)."""
    code = (
        "import threading, time\n"
        "threading.Thread(target=time.sleep, args=(60,), daemon=True).start()\n"
        "print('bye')\n"
    )
    assert ok(in_cell(built.packages["python3"], ["python3", "-c", code])) == "bye\n"


def test_node_is_22_or_newer_with_npm(built):
    node = built.packages["nodejs"]
    assert built.packages["nodejs_22"] == node
    out = ok(in_cell(node, ["node", "-e", "console.log(process.versions.node)"]))
    assert int(out.split(".")[0]) >= 22
    if (Path(node) / "bin" / "npm").exists():
        assert ok(in_cell(node, ["npm", "--version"])).strip()


def test_git_init_add_commit(built, tmp_path):
    git = built.packages["git"]
    env = {
        "GIT_AUTHOR_NAME": "a",
        "GIT_AUTHOR_EMAIL": "a@example.invalid",
        "GIT_COMMITTER_NAME": "a",
        "GIT_COMMITTER_EMAIL": "a@example.invalid",
    }
    work = ((str(tmp_path), "/work"),)
    ok(in_cell(git, ["git", "init", "-q", "-b", "main", "/work/r"], binds=work, env=env))
    (tmp_path / "r" / "f.txt").write_text("hello\n")
    ok(in_cell(git, ["git", "add", "f.txt"], binds=work, env=env, cwd="/work/r"))
    ok(in_cell(git, ["git", "commit", "-qm", "first"], binds=work, env=env, cwd="/work/r"))
    log = ok(in_cell(git, ["git", "log", "--format=%s"], binds=work, env=env, cwd="/work/r"))
    assert log == "first\n"
    assert (tmp_path / "r" / ".git" / "description").exists()  # templates were found
    exec_path = ok(in_cell(git, ["git", "--exec-path"])).strip()
    assert exec_path.startswith(git + "/")
    helper = in_cell(git, [f"{exec_path}/git-remote-https"])
    assert "remote-curl" in helper.stderr  # it ran (usage error), all its libraries loaded


def test_file_uses_its_own_magic_db(built):
    file_pkg = built.packages["file"]
    out = ok(in_cell(file_pkg, ["file", "-b", f"{file_pkg}/libexec/file/file"]))
    assert "ELF 64-bit" in out or "ELF 32-bit" in out


def test_closures_are_only_self_and_glibc(built):
    glibc = built.packages["glibc"]
    problems = []
    for name, path in sorted(built.packages.items()):
        allowed = {path} if name in ("glibc", "busybox") else {path, glibc}
        allowed |= {built.packages[dep] for dep in EXTRA_REFS.get(name, ())}
        extra = sorted(set(closure(path)) - allowed)
        if extra:
            problems.append(f"{name}: unexpected {', '.join(extra)}")
    assert not problems, "\n".join(problems)


def test_no_loader_path_outside_the_store(built):
    problems = []
    fixed = {f"{built.packages[n]}/{rel}" for n, rels in FIXED_LAYOUT.items() if n in built.packages
             for rel in rels}  # fmt: skip
    for path in sorted(set(built.packages.values())):
        for dirpath, _dirs, files in os.walk(path):
            for f in files:
                p = Path(dirpath, f)
                if p.is_symlink() or not elf.is_elf(p):
                    continue
                info = elf.read_elf(p)
                assert info is not None
                if info.interpreter is not None and not info.interpreter.startswith("/nix/store/"):
                    problems.append(f"{p}: interpreter {info.interpreter}")
                for entry in filter(None, (info.search_path or "").split(":")):
                    if not entry.startswith(("$ORIGIN", "/nix/store/")):
                        problems.append(f"{p}: RUNPATH entry {entry}")
                # glibc's own objects find each other through the loader; all else needs one
                own_glibc = path == built.packages["glibc"]
                if str(p) in fixed:
                    if info.search_path is not None or not set(info.needed) <= GLIBC_SONAMES:
                        problems.append(f"{p}: fixed layout but RUNPATH or non-glibc libraries")
                elif info.dynamic and not own_glibc and info.search_path is None:
                    problems.append(f"{p}: dynamic object without RUNPATH")
    assert not problems, "\n".join(problems[:20])


def build_env(built, attrs: list[str], link: Path) -> str:
    """``buildEnv`` of these attrs of set.nix (dotted ones too), as the resolver builds it."""
    paths = " ".join("pkgs." + ".".join(json.dumps(part) for part in a.split(".")) for a in attrs)
    expr = (
        f'let pkgs = import {built.nix_file}; in pkgs.buildEnv {{ name = "nixcell-env"; '
        f"paths = [ {paths} ]; }}"
    )
    subprocess.run(
        ["nix-build", *NO_SUBSTITUTERS, "--out-link", str(link), "-E", expr],
        capture_output=True,
        text=True,
        check=True,
    )
    return os.readlink(link)


def test_buildenv_from_set_nix(built, tmp_path):
    """The resolver's contract: import set.nix, buildEnv, closure = union of the closures."""
    attrs = ["busybox", "coreutils", "python3", "which"]
    env = build_env(built, attrs, tmp_path / "env")
    union = {env}
    for a in attrs:
        union |= set(closure(built.packages[a]))
    assert set(closure(env)) == union
    # first path wins: busybox's ls, not coreutils'
    assert os.readlink(Path(env, "bin", "ls")) == f"{built.packages['busybox']}/bin/ls"
    assert os.readlink(Path(env, "bin", "python3")) == f"{built.packages['python3']}/bin/python3"
    out = ok(in_cell(env, ["python3", "-c", "import sys; print(sys.prefix)"]))
    assert out.strip() == built.packages["python3"]


def test_find_set_and_rebuild_is_a_noop(built):
    found = offline.find_set()
    assert found is not None
    assert found.packages == built.packages and found.ident == built.ident
    stamp = (found.nix_file.parent / "set.json").stat().st_mtime_ns
    lines: list[str] = []
    again = offline.build(log=lines.append)
    assert again == built
    assert not any("staging" in line for line in lines), lines
    assert (found.nix_file.parent / "set.json").stat().st_mtime_ns == stamp
    for attr in REQUIRED:
        assert attr in again.packages, f"{attr} missing (see `nixcell offline build` output)"


def test_every_package_is_a_gc_root(built):
    """nix-collect-garbage must never delete the set: each path has a root under the set dir."""
    out = subprocess.run(
        ["nix-store", *NO_SUBSTITUTERS, "--gc", "--print-roots"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    rooted = {line.split(" -> ", 1)[1] for line in out.splitlines() if " -> " in line}
    roots_dir = str(built.nix_file.parent / "roots")
    ours = {
        line.split(" -> ", 1)[1] for line in out.splitlines() if line.startswith(roots_dir + "/")
    }
    missing = sorted(set(built.packages.values()) - ours)
    assert not missing, f"not rooted under {roots_dir}: {missing}"
    assert ours <= rooted


def test_python_packages_join_the_env_site_packages(built, tmp_path):
    """python3Packages.* land in the env's lib/python3.X/site-packages (the plan's PYTHONPATH)."""
    attrs = ["python3", "python3Packages.pyyaml", "python3Packages.numpy"]
    assert built.packages["python311Packages.numpy"] == built.packages["python3Packages.numpy"]
    env = build_env(built, attrs, tmp_path / "env")
    sites = list(Path(env, "lib").glob("python3.*/site-packages"))
    assert len(sites) == 1 and {"yaml", "numpy"} <= {p.name for p in sites[0].iterdir()}
    code = "import yaml, numpy; print(yaml.safe_dump(numpy.eye(2).tolist()), end='')"
    out = ok(in_cell(env, ["python3", "-c", code], env={"PYTHONPATH": str(sites[0])}))
    assert out == "- - 1.0\n  - 0.0\n- - 0.0\n  - 1.0\n"

# ruff: noqa: E501 - the cells run embedded scripts; keeping their lines whole reads better
"""The escape matrix: the same properties checked on every backend this host runs (issue 12).

One cell gathers many facts (a Docker cell costs ~1 s, a TCG microVM cell 5-9 s); the host
side compares them with what it knows of itself (its init, its kernel command line, its
interfaces, a file it planted). Where a backend's correct behaviour differs (Docker's /sys,
gVisor's own /proc), the difference is a row of a table below, asserted, never skipped.
Network: only loopback listeners of this process (``test_backend_matrix_net.py`` has the policy,
credential and limit rows).
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import secrets
import socket
from pathlib import Path

import pytest
from tests.conftest import cli
from tests.integration.backendrig import FAST_ONLY
from tests.integration.test_seccomp import ALLOWED, PROBE

PACKAGES = ["python3"]
# What a cell's / holds, by plan; then what each backend adds of its own (never the host's).
PLANNED_ROOT = {"bin", "dev", "etc", "home", "nix", "proc", "tmp", "usr", "workspace"}
BACKEND_ROOT = {
    "bwrap": set(),
    "docker": {"sys", ".dockerenv", "pause", "sbin"},  # an empty /sys, the holder's /pause, tini
    "gvisor": {"sys"},  # gVisor's own sysfs
    "microvm": {"sys", "run"},  # the guest kernel's own sysfs
}
PLANNED_ETC = {"passwd", "group", "hosts", "host.conf", "hostname", "nsswitch.conf", "ssl"}
BACKEND_ETC = {
    "bwrap": set(),
    "docker": {"resolv.conf", "mtab"},
    "gvisor": {"resolv.conf"},  # the empty one dockerspec.layout binds for both OCI backends
    "microvm": set(),
}
# /sys: absent under bwrap, an empty read-only tmpfs under Docker; the others' own (checked for
# the host's interfaces below).
SYS_VIEW = {"bwrap": None, "docker": [], "gvisor": "own", "microvm": "own"}
# A backend with a kernel of its own shows that kernel's threads (children of its kthreadd,
# pid 2) in its /proc: not the host's processes, not counted among the cell's.
OWN_KERNEL = {"microvm"}
WRITABLE = ["/tmp", "/home/cell", "/workspace", "/dev/shm"]
READ_ONLY = ["/x", "/etc/x", "/etc/passwd", "/nix/x", "/nix/store/x", "CLOSURE/x", "/usr/x",
             "/bin/x", "/bin/sh", "/dev/x", "/proc/sysrq-trigger", "/proc/sys/kernel/hostname",
             "/sys/x"]  # fmt: skip
# Answers of a denied call: the filter's EPERM/ENOSYS/EAFNOSUPPORT; <0 is killed by that signal.
DENIED = {errno.EPERM, errno.ENOSYS, errno.EAFNOSUPPORT}
# A backend's own answer where the probed entry point does not exist there. gVisor has no i386
# ABI: `int 0x80` runs the *64-bit* call of that number, under the same in-sandbox filter — 102
# is getuid (the cell's uid, not a socket), 120 getresgid with NULL pointers (EFAULT, no
# namespace). test_backend_gvisor.py proves that reading of int 0x80 on its own.
OWN_ANSWERS = {"gvisor": {"int80_socketcall": 0, "int80_clone_newuser": errno.EFAULT}}


def _probe_checks() -> list[str]:
    import importlib.util

    spec = importlib.util.spec_from_file_location("syscall_probe_matrix", PROBE)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return sorted(set(module.CHECKS) - ALLOWED)


ESCAPES = _probe_checks()  # every probe check a default cell must be refused

FACTS = r"""
import ctypes, errno, json, os, socket, subprocess, sys
facts = {"stdin": sys.stdin.read()}
def attempt(fn):
    try:
        fn(); return "ok"
    except TimeoutError:
        return "timeout"
    except OSError as e:
        return errno.errorcode.get(e.errno, str(e.errno))
def listing(path):
    try:
        return sorted(os.listdir(path))
    except OSError as e:
        return errno.errorcode.get(e.errno)
def read(path):
    try:
        with open(path, "rb") as f:
            return f.read().decode(errors="replace")
    except OSError as e:
        return "!" + errno.errorcode.get(e.errno, "?")
status = dict(l.split(":", 1) for l in open("/proc/self/status") if ":" in l)
facts["uids"] = status["Uid"].split() + status["Gid"].split()
facts["caps"] = {k: int(status[k], 16) for k in ("CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb") if k in status}
libc = ctypes.CDLL(None, use_errno=True)
facts["nnp"] = libc.prctl(39, 0, 0, 0, 0)  # PR_GET_NO_NEW_PRIVS
facts["hostname"] = os.uname().nodename
facts["root"], facts["etc"], facts["home"] = listing("/"), listing("/etc"), listing("/home")
facts["store"], facts["tmp"] = listing("/nix/store"), listing("/tmp")
facts["passwd"] = read("/etc/passwd")
closure = "/nix/store/" + facts["store"][0]
facts["writes"] = {p: attempt(lambda p=p: open(p.replace("CLOSURE", closure), "a").write("x")) for p in json.loads(os.environ["READ_ONLY"])}
facts["writable"] = {p: attempt(lambda p=p: open(p + "/w", "w").write("x")) for p in json.loads(os.environ["WRITABLE"])}
with open("/tmp/run.sh", "w") as f:
    f.write("#!/bin/sh\necho ran\n")
os.chmod("/tmp/run.sh", 0o755)
facts["exec_tmp"] = subprocess.run(["/tmp/run.sh"], capture_output=True).stdout.decode()
facts["pid1"] = read("/proc/1/cmdline").replace("\0", " ").strip()
pids = [p for p in os.listdir("/proc") if p.isdigit()]
facts["npids"] = len(pids)
facts["kthreads"] = sum(read(f"/proc/{p}/stat").split(") ")[-1].split()[1:2] == ["2"] for p in pids)
facts["cmdlines"] = [read(f"/proc/{p}/cmdline").replace("\0", " ") for p in pids]
facts["kcmdline"] = read("/proc/cmdline").strip()
kallsyms = read("/proc/kallsyms")  # unreadable ("!EACCES"), empty, or addresses zeroed
facts["kallsyms"] = [l for l in kallsyms.splitlines() if l[:1] != "!" and not l.startswith("0000000000000000")][:3]
facts["sys"] = listing("/sys")
facts["sys_net"] = listing("/sys/class/net")
facts["ifaces"] = sorted(name for _, name in socket.if_nameindex())
facts["loopback"] = {}
for family, addr in json.loads(os.environ["LISTENERS"]):
    s = socket.socket(family); s.settimeout(5)
    facts["loopback"][addr] = attempt(lambda: s.connect((addr, int(os.environ["PORT"]))))
probe = subprocess.run([sys.executable, "-c", os.environ["PROBE_SRC"], *json.loads(os.environ["ESCAPES"])], capture_output=True, text=True)
facts["probe"] = json.loads(probe.stdout) if probe.returncode == 0 else probe.stderr[-500:]
print(json.dumps(facts))
print("to stderr", file=sys.stderr)
sys.exit(3)
"""


def host_listeners() -> list[tuple[socket.socket, int, str]]:
    """Loopback listeners on one port (127.0.0.1, and ::1 where the host has IPv6)."""
    first = socket.create_server(("127.0.0.1", 0))
    port = first.getsockname()[1]
    found = [(first, socket.AF_INET, "127.0.0.1")]
    if os.path.isdir("/proc/sys/net/ipv6"):
        with contextlib.suppress(OSError):
            six = socket.create_server(("::1", port), family=socket.AF_INET6)
            found.append((six, socket.AF_INET6, "::1"))
    return found


_FACTS: dict[str, dict] = {}


@pytest.fixture
def facts(backend_cell, offline_set) -> dict:
    """The FACTS cell's findings (one cell per backend, shared by the tests below), with what
    the host planted and listened on while it ran."""
    if backend_cell.backend not in _FACTS:
        _FACTS[backend_cell.backend] = _gather(backend_cell)
    return _FACTS[backend_cell.backend]


def _gather(backend_cell) -> dict:
    planted = Path("/tmp") / f"host-planted-{secrets.token_hex(4)}"
    planted.write_text("host file\n")
    listeners = host_listeners()
    env = {
        "PORT": str(listeners[0][0].getsockname()[1]),
        "LISTENERS": json.dumps([[fam, addr] for _, fam, addr in listeners]),
        "READ_ONLY": json.dumps(READ_ONLY),
        "WRITABLE": json.dumps(WRITABLE),
        "ESCAPES": json.dumps(ESCAPES),
        "PROBE_SRC": PROBE.read_text(),
    }
    try:
        result = backend_cell(
            ["python3", "-c", FACTS], packages=PACKAGES, env=env, input=b"from stdin\n"
        )
        accepted = []
        for sock, _, addr in listeners:
            sock.setblocking(False)
            try:
                sock.accept()
                accepted.append(addr)
            except BlockingIOError:
                pass
    finally:
        planted.unlink()
        for sock, _, _ in listeners:
            sock.close()
    assert result.exit_code == 3, result
    found = json.loads(result.stdout)
    found.update(stderr=result.stderr.decode(), accepted=accepted, planted=planted.name)
    found["backend"] = backend_cell.backend
    return found


def test_only_the_closure_and_planned_files_are_visible(facts, offline_set):
    """Only the closure: no other store path, no host /etc, /home, /root or /tmp."""
    backend = facts["backend"]
    flags = [a for p in PACKAGES for a in ("-p", p)]
    plan = json.loads(
        cli("run", "--backend", backend, "--dry-run", "--json", *flags, "--", "true").stdout
    )
    assert {f"/nix/store/{n}" for n in facts["store"]} == set(plan["closure"])
    other = [p for p in offline_set.packages.values() if p not in plan["closure"]]
    assert other and not {os.path.basename(p) for p in other} & set(facts["store"])
    assert set(facts["root"]) <= PLANNED_ROOT | BACKEND_ROOT[backend], facts["root"]
    assert set(facts["etc"]) <= PLANNED_ETC | BACKEND_ETC[backend], facts["etc"]
    assert facts["home"] == ["cell"]
    assert facts["passwd"] != Path("/etc/passwd").read_text()  # the plan's, not the host's
    assert facts["planted"] not in facts["tmp"]  # the host's /tmp is not the cell's


def test_no_host_root(facts):
    """Not uid/gid 0 (real, effective, saved, fs), every capability set empty, no_new_privs."""
    assert "0" not in facts["uids"], facts["uids"]
    assert set(facts["caps"]) >= {"CapEff", "CapPrm", "CapBnd"}
    assert all(v == 0 for v in facts["caps"].values()), facts["caps"]
    assert facts["nnp"] == 1


def test_writes_outside_writable_places_are_refused(facts):
    """The root, /etc, the store, /usr, /bin, /dev, /proc and /sys refuse writes; the writable
    places take them, and a script written there runs."""
    assert {p: r for p, r in facts["writes"].items() if r == "ok"} == {}
    assert set(facts["writes"].values()) <= {"EROFS", "EACCES", "ENOENT", "EPERM"}, facts["writes"]
    assert facts["writable"] == {p: "ok" for p in WRITABLE}
    assert facts["exec_tmp"] == "ran\n"


def test_proc_and_sys_show_nothing_of_the_host(facts):
    """Its own pid 1 and a handful of processes (never the test's), not the host's kernel
    command line or kernel symbols, no host interface under /sys."""
    host_init = Path("/proc/1/cmdline").read_bytes().replace(b"\0", b" ").decode().strip()
    assert facts["pid1"] != host_init
    kthreads = facts["kthreads"] if facts["backend"] in OWN_KERNEL else 0
    assert facts["npids"] - kthreads < 10, facts["cmdlines"]
    assert not any("pytest" in c for c in facts["cmdlines"]), facts["cmdlines"]
    host_cmdline = Path("/proc/cmdline").read_text().strip()
    assert not host_cmdline or facts["kcmdline"] != host_cmdline
    assert facts["kallsyms"] == []  # no address of the host kernel's symbols
    expected_sys = SYS_VIEW[facts["backend"]]
    if expected_sys is None:
        assert facts["sys"] == "ENOENT"
    elif expected_sys == []:
        assert facts["sys"] == []
    host_ifaces = set(os.listdir("/sys/class/net")) - {"lo"}
    seen = set(facts["sys_net"]) if isinstance(facts["sys_net"], list) else set()
    assert not (seen & host_ifaces), seen & host_ifaces
    assert facts["hostname"] == "cell"


def test_escape_syscalls_are_refused(facts):
    """Every check of tests/probes/syscalls.py a default cell must not pass (namespaces, mounts,
    ptrace, kernel modules, bpf, keyrings, io_uring, setuid bits, odd socket families, compat
    entry points) is refused — EPERM, ENOSYS, EAFNOSUPPORT or killed — on every backend."""
    got = facts["probe"]
    assert isinstance(got, dict), got
    name = errno.errorcode.get
    own = OWN_ANSWERS.get(facts["backend"], {})
    passed = {
        c: name(e, e) for c, e in got.items() if not (e < 0 or e in DENIED or own.get(c) == e)
    }
    assert passed == {}
    if os.uname().machine == "x86_64":  # (elsewhere the int 0x80 and x32 checks report nothing)
        assert set(got) == set(ESCAPES)


def test_no_network_without_a_policy(facts):
    """Only lo; the host's loopback listeners are not reachable and accepted nothing."""
    assert facts["ifaces"] == ["lo"]
    refused = {"ECONNREFUSED", "ENETUNREACH", "EADDRNOTAVAIL", "timeout"}
    assert set(facts["loopback"].values()) <= refused, facts["loopback"]
    assert facts["loopback"] and "ok" not in facts["loopback"].values()
    assert facts["accepted"] == []


def test_stdio_and_exit_code_pass_through(facts):
    assert facts["stdin"] == "from stdin\n"
    assert facts["stderr"].strip() == "to stderr"


EXITS = [
    pytest.param("exit 0", 0, marks=FAST_ONLY, id="exit-0"),
    pytest.param("exit 1", 1, marks=FAST_ONLY, id="exit-1"),
    pytest.param("exit 255", 255, marks=FAST_ONLY, id="exit-255"),
    pytest.param("kill -TERM $$", 143, marks=FAST_ONLY, id="sigterm"),
    pytest.param("kill -KILL $$", 137, id="sigkill"),
]


@pytest.mark.parametrize(("script", "code"), EXITS)
def test_exit_codes_and_signals(backend_cell, script, code):
    """A shell's view: the code itself, 128+N for signal N (the program is not PID 1)."""
    result = backend_cell(script, packages=["bash"])
    assert (result.exit_code, result.oom_killed, result.timed_out) == (code, False, False), result


def test_slow_backends_run_a_small_subset(request):
    """A microVM cell costs 5-9 s under TCG: the matrix gives it at most 8 cells (the FACTS
    cell counts once); a new case for every backend is either cheap there or ``fast_only``."""
    slow = [
        item
        for item in request.session.items
        if "test_backend_matrix" in item.nodeid
        and "[microvm" in item.nodeid
        and item.get_closest_marker("fast_only") is None
    ]
    shared = any("facts" in item.fixturenames for item in slow)
    cells = int(shared) + sum("facts" not in item.fixturenames for item in slow)
    assert cells <= 8, (cells, [item.nodeid for item in slow])

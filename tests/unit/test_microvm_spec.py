"""The microvm backend's translation of a Plan (QEMU argv, the guest's cell.sh, the initramfs),
its refusals, the KVM/TCG choice and the proxy framing: pure, no QEMU started. The boots are in
tests/integration/test_backend_microvm.py."""

from __future__ import annotations

import dataclasses
import os
import shlex
import socket
import threading

import pytest

from nixcell.host import HostFacts
from nixcell.nix.closure import Closure
from nixcell.plan import MountOp, plan
from nixcell.sandbox import (
    microvm,
    microvmcell,
    microvmguest,
    microvminitrd,
    microvmkvm,
    microvmnet,
)
from nixcell.spec import make_spec

ENV = "/nix/store/" + "a" * 32 + "-nixcell-env"
BASH = "/nix/store/" + "b" * 32 + "-bash"
CLOSURE = Closure(ENV, (ENV, BASH), ("bash", "env"), "offline package set", ("bash", "sh"))
HOST = HostFacts(uid=0, gid=0, term="xterm", proc_entries={"/proc/sys": "dir"})
FDS = {c: 10 + i for i, c in enumerate(microvm.CHANNELS)}


def make(**kw):
    kw.setdefault("command", ["bash", "-c", "echo 'it''s' $HOME"])
    kw.setdefault("packages", ["bash"])
    kw.setdefault("backend", "microvm")
    return plan(make_spec(**kw), CLOSURE, HOST)


def argv(p, accel="tcg"):
    return microvm.qemu_argv(
        p, accel, FDS, "/proc/self/fd/9", "/boot/vmlinuz-x", "nixcell-vm.1-2.c"
    )


def opt(args, name):
    return [args[i + 1] for i, a in enumerate(args) if a == name]


@pytest.mark.parametrize(
    ("limits", "memory", "smp"),
    [({}, "512M", "1"), ({"memory": "256M", "cpus": 2}, "256M", "2"),
     ({"memory": str((300 << 20) + 12345)}, "300M", "1")],
)  # fmt: skip
def test_memory_is_the_guest_ram_never_more_and_cpus_are_vcpus(limits, memory, smp):
    args = argv(make(limits=limits))
    assert opt(args, "-m") == [memory] and opt(args, "-smp") == [smp]


def test_tcg_and_kvm_argv():
    p = make()
    tcg, kvm = argv(p, "tcg"), argv(p, "kvm")
    assert opt(tcg, "-machine") == ["q35,accel=tcg"] and opt(tcg, "-cpu") == ["max"]
    assert opt(kvm, "-machine") == ["q35,accel=kvm"] and opt(kvm, "-cpu") == ["host"]
    assert [a for a in tcg if "accel" not in a and a not in ("max", "host")] == [
        a for a in kvm if "accel" not in a and a not in ("max", "host")
    ]  # the rest is the same: KVM changes only the accelerator


def test_no_nic_direct_boot_closure_share_readonly():
    args = argv(make())
    assert "-nodefaults" in args and "-no-user-config" in args
    assert not {"-netdev", "-nic", "-net", "-bios"} & set(args)
    assert not any("virtio-net" in a or "vhost" in a for a in args)
    assert opt(args, "-kernel") == ["/boot/vmlinuz-x"] and opt(args, "-initrd") == [
        "/proc/self/fd/9"
    ]
    cmdline = opt(args, "-append")[0].split()
    assert "quiet" in cmdline and "console=hvc0" in cmdline and "panic=-1" in cmdline
    shares = opt(args, "-fsdev")
    assert all("readonly=on" in s and "security_model=none" in s for s in shares)
    assert [s.split("path=")[1].split(",")[0] for s in shares] == [
        f"{microvm.STAGE}/store",
        f"{microvm.STAGE}/cfg",
    ]
    assert opt(args, "-sandbox")[0].startswith("on,")
    chardevs = opt(args, "-chardev")
    assert chardevs == [f"socket,id={c},fd={FDS[c]}" for c in microvm.CHANNELS if c != "proxy"]
    networked = argv(make(network={"allow_hosts": ["up.test:443"]}))
    assert f"socket,id=proxy,fd={FDS['proxy']}" in opt(networked, "-chardev")


def test_the_kvm_probe_boots_the_guest_under_kvm():
    args = microvmkvm.probe_argv("/boot/vmlinuz-x", "/proc/self/fd/3")
    assert opt(args, "-machine") == ["q35,accel=kvm"] and opt(args, "-cpu") == ["host"]
    assert "nixcell.probe=1" in opt(args, "-append")[0] and "-netdev" not in args
    assert microvmkvm.PROBE_TIMEOUT <= 20


def test_cell_script_builds_the_plans_root_and_runs_as_the_cell_user():
    p = make(env={"X": "a b'c"}, limits={"pids": 32})
    script, files = microvmguest.cell_script(p)
    assert "exec env -i " in script and ' /proc/self/fd/9 1000 1000 8 "$prog" "$@"' in script
    assert "setpriv" not in script and "nsenter -S 1000" not in script  # the helper does it all
    assert "sysctl -qw user.max_user_namespaces=0" in script
    assert "echo 32 >/.nixcell/cg/cell/pids.max" in script
    assert shlex.quote("X=a b'c") in script
    assert "set -- bash -c " + shlex.quote("echo 'it''s' $HOME") in script
    for dest, mode in (("/tmp", "1777"), ("/home/cell", "0700"), ("/workspace", "0755")):
        assert f"mount -t tmpfs -o mode={mode},uid=1000,gid=1000 tmpfs {dest}" in script
    for path in CLOSURE.paths:  # the store share holds the closure: no per-path op
        assert path not in script.replace(f"{ENV}/bin", "")
    data = {files[k].decode() for k in files}
    assert any(t.startswith("root:x:0:0:") for t in data)
    assert script.index("umount -l /.nixcell/cfg") < script.index("mount -o remount,ro / ")
    assert script.rstrip().endswith("poweroff -f")


@pytest.mark.parametrize("change", [{}, {"limits": {"disk": "8M"}}, {"limits": {"pids": 8}}, "rw"])
def test_the_exec_helper_and_filter_stay_open_across_the_hiding(change):
    """The helper and the seccomp program are opened (fds 9, 8) before /.nixcell goes, only
    after checking both are there (a missing one fails the cell, never runs it unfiltered); the
    program is started through the helper only, and init drops both fds once it forked."""
    p = make(**(change if isinstance(change, dict) else {}))
    if change == "rw":  # no read-only root: the hiding comes last, after the other mounts
        ops = tuple(op for op in p.mounts if not (op.kind == "remount-ro" and op.dest == "/"))
        assert ops != p.mounts
        p = dataclasses.replace(p, mounts=ops)
    script, _ = microvmguest.cell_script(p)
    keep = "exec 8</.nixcell/cfg/seccomp.bpf 9</.nixcell/exec;"
    check = "[ -f /.nixcell/exec ] && [ -s /.nixcell/cfg/seccomp.bpf ] || fail 126"
    assert script.count(keep) == 1 and script.count(check) == 1
    assert script.index(check) < script.index(keep) < script.index("umount -l /.nixcell/cfg")
    assert script.index(keep) < script.index("rm -rf /init ") < script.index('"$prog"')
    assert "/.nixcell/exec;" in script.split("rm -rf /init", 1)[1].split("\n")[0]  # removed too
    runs = [line for line in script.splitlines() if '"$prog"' in line]
    assert len(runs) == 1 and runs[0].strip().startswith("exec env -i ")
    assert runs[0].split()[-6:] == ["/proc/self/fd/9", "1000", "1000", "8", '"$prog"', '"$@"']
    assert script.index("child=$!\nexec 8<&- 9<&-") < script.index("wait $child")


@pytest.mark.parametrize("profiles", [(), ("debugger",), ("nested-sandbox",), ("jit-runtime",)])
def test_the_guest_gets_the_plans_own_seccomp_program(profiles):
    """The cfg share carries the very program bwrap gets for the plan's profiles."""
    from nixcell.sandbox.seccache import seccomp_program

    p = make(hardening_profiles=list(profiles))
    files, blobs = microvmcell.cfg_files(p, (1000, 1000))
    assert set(blobs) == {"cfg/seccomp.bpf"} and "cfg/cell.sh" in files
    program = bytes.fromhex(blobs["cfg/seccomp.bpf"])
    assert program == seccomp_program(tuple(profiles)) and len(program) % 8 == 0
    if profiles in (("debugger",), ("nested-sandbox",)):
        assert program != seccomp_program(())


def test_without_gcc_every_plan_is_refused_in_one_line(monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))  # no gcc on PATH: the helper cannot be built
    assert not microvminitrd.can_filter()
    for p in (make(), make(hardening_profiles=["debugger"])):
        refused = microvm.BACKEND.refusals(p)
        assert any(r.startswith("the seccomp filter (no gcc") for r in refused), refused
        assert all("\n" not in r for r in refused)


def test_the_initramfs_key_covers_both_helpers():
    assert set(microvminitrd.HELPERS) == {"relay", "exec"}
    assert all(os.path.exists(s) for s in microvminitrd.HELPERS.values())
    assert "/.nixcell/exec" in microvmguest._HIDE_INIT


def test_disk_is_one_tmpfs_for_every_writable_area():
    p = make(limits={"disk": "8M"})
    script, _ = microvmguest.cell_script(p)
    assert f"mount -t tmpfs -o size={8 << 20},mode=0755 scratch /.nixcell/scratch" in script
    for name, dest in (("tmp", "/tmp"), ("home", "/home/cell"), ("workspace", "/workspace")):
        assert f"mount --bind /.nixcell/scratch/{name} {dest}" in script
    assert microvm.BACKEND.refusals(p) == []


@pytest.mark.parametrize(
    ("change", "words"),
    [({"limits": {"cpus": 0.5}}, "--cpus 0.5"), ({"limits": {"memory": "32M"}}, "--memory below"),
     ({"host_network": True}, "the host's network"),
     ({"command": ["printf", "%s", "\udcfe\udcff"]}, "an argument that is not UTF-8"),
     ({"env": {"X": "a\udcffb"}}, "an environment entry that is not UTF-8")],
)  # fmt: skip
def test_refusals_are_named(change, words):
    p = make(**change)
    assert any(words in r for r in microvm.BACKEND.refusals(p)), microvm.BACKEND.refusals(p)


def test_host_directories_are_shared_small_files_copied_links_refused(tmp_path):
    p = make()
    (tmp_path / "ca.pem").write_text("CA")
    os.symlink(tmp_path / "ca.pem", tmp_path / "link")
    for src, refused in ((str(tmp_path), False), (str(tmp_path / "ca.pem"), False),
                         (str(tmp_path / "link"), True)):  # fmt: skip
        q = dataclasses.replace(p, mounts=(*p.mounts, MountOp("ro-bind", "/etc/x", src=src)))
        assert bool(microvm.BACKEND.refusals(q)) is refused, src
    q = dataclasses.replace(
        p, mounts=(*p.mounts, MountOp("ro-bind", "/etc/ca", src=str(tmp_path / "ca.pem")))
    )
    _, files = microvmguest.cell_script(q)
    assert b"CA" in files.values()
    q = dataclasses.replace(p, mounts=(*p.mounts, MountOp("bind", "/data", src=str(tmp_path))))
    assert microvmguest.host_binds(q) == [("/data", str(tmp_path), False)]
    script, files = microvmguest.cell_script(q, (4242, 4343))
    assert "mount -t 9p -o trans=virtio,version=9p2000.L,rw,msize=262144 bind0 /data" in script
    assert '/proc/self/fd/9 4242 4343 8 "$prog"' in script
    assert any("\ncell:x:4242:4343:" in f.decode() for f in files.values())
    shares = opt(argv(q), "-fsdev")
    assert f"local,id=bind0,path={microvm.STAGE}/binds/0,security_model=none" in shares


def test_the_initramfs_is_a_newc_cpio_with_busybox_modules_and_init():
    blob = microvminitrd._cpio([("init", 0o100755, b"#!x\n"), ("d", 0o40755, b"")])
    assert blob.startswith(b"070701") and b"TRAILER!!!" in blob and len(blob) % 4 == 0
    names, at = [], 0
    while at < len(blob):
        size, namesize = int(blob[at + 54 : at + 62], 16), int(blob[at + 94 : at + 102], 16)
        name = blob[at + 110 : at + 110 + namesize - 1].decode()
        names.append(name)
        at += 110 + namesize
        at += -at % 4 + size
        at += -at % 4
        if name == "TRAILER!!!":
            break
    assert names == ["init", "d", "TRAILER!!!"]
    assert len(microvminitrd.MODULES) == 11 and "9p.ko" in microvminitrd.MODULES[-1]


def test_the_sweep_spares_live_owners():
    assert microvm.sweep() == [] or all(n.startswith(microvm.NAME_PREFIX) for n in microvm.sweep())


def test_the_host_mux_frames_streams_to_the_proxy():
    """Two guest streams over one channel, each to its own connection to a local listener."""
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    guest, host = socket.socketpair()
    mux = microvmnet.Mux(host, None, port)
    done = threading.Event()
    threading.Thread(target=mux.run, args=(done,), daemon=True).start()
    f = microvmnet.frame
    guest.sendall(f(1, microvmnet.OPEN) + f(2, microvmnet.OPEN))
    conns = [listener.accept()[0] for _ in range(2)]
    guest.sendall(
        f(1, microvmnet.DATA, b"one") + f(2, microvmnet.DATA, b"two") + f(1, microvmnet.END)
    )
    got = sorted(c.recv(10) for c in conns)
    assert got == [b"one", b"two"]
    for c in conns:
        c.sendall(b"back")
        c.close()
    want = 2 * (microvmnet.HEADER.size + 4) + 2 * microvmnet.HEADER.size
    data = b""
    guest.settimeout(5)
    while len(data) < want:
        data += guest.recv(4096)
    frames = []
    while data:
        stream, kind, size = microvmnet.HEADER.unpack_from(data)
        frames.append((stream, kind, data[8 : 8 + size]))
        data = data[8 + size :]
    assert sorted(frames) == [(1, 2, b"back"), (1, 3, b""), (2, 2, b"back"), (2, 3, b"")]
    guest.close()
    assert done.wait(5)
    listener.close()

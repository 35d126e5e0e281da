"""The docker backend's translation of a Plan, and what it refuses: pure, no daemon."""

from __future__ import annotations

import dataclasses
import json

from nixcell.host import HostFacts
from nixcell.nix.closure import Closure
from nixcell.plan import MountOp, plan
from nixcell.sandbox import docker, dockerimage, dockerseccomp, dockerspec, seccomp
from nixcell.spec import make_spec

ENV = "/nix/store/" + "a" * 32 + "-nixcell-env"
BASH = "/nix/store/" + "b" * 32 + "-bash"
CLOSURE = Closure(ENV, (ENV, BASH), ("bash", "env"), "offline package set", ("bash", "sh"))
HOST = HostFacts(
    uid=0, gid=0, term="xterm", proc_entries={"/proc/sys": "dir", "/proc/kcore": "file",
                                              "/proc/acpi": "dir"},
)  # fmt: skip


def make(**kw):
    kw.setdefault("command", ["bash", "-c", "true"])
    kw.setdefault("packages", ["bash"])
    kw.setdefault("backend", "docker")
    return plan(make_spec(**kw), CLOSURE, HOST)


def test_every_op_is_translated_in_place():
    p = make(limits={"memory": "64M", "pids": 32, "cpus": 0.5})
    layout = dockerspec.layout(p, (4242, 4343), "/top", "/run/nixcell/scratch")
    assert layout.refusals == []
    binds = {m["Target"]: m for m in layout.mounts}
    for path in CLOSURE.paths:  # the closure, read-only, from itself
        assert binds[path] == {"Type": "bind", "Source": path, "Target": path, "ReadOnly": True}
    # data files from the private host directory; the cell user is the container's uid
    passwd = binds["/etc/passwd"]["Source"]
    assert passwd.startswith("/top/files/") and binds["/etc/passwd"]["ReadOnly"]
    text = layout.files[passwd[len("/top/") :]].decode()
    assert "\ncell:x:4242:4343:cell:/home/cell:" in text
    # symlinks: a host directory of links bound at their directory
    assert binds["/bin"]["Source"].startswith("/top/links/")
    links = layout.links[binds["/bin"]["Source"][len("/top/") :]]
    assert links == {"sh": f"{ENV}/bin/sh", "bash": f"{ENV}/bin/bash"}
    assert binds[dockerspec.RESOLV_CONF]["Source"] == "/dev/null"  # not Docker's
    # writable areas: tmpfs owned by the cell, exec allowed (Docker's default is noexec)
    assert layout.tmpfs["/home/cell"] == "mode=0700,uid=4242,gid=4343,exec"
    assert layout.tmpfs["/tmp"].startswith("mode=1777,uid=4242")
    # /proc covers and sysfs
    assert "/proc/sys" in layout.readonly and "/proc/kcore" in layout.masked
    assert "/proc/acpi" in layout.masked and "/sys" in layout.masked
    assert layout.readonly_root
    body = docker.cell_body(p, layout, "img", (4242, 4343), "none", "{}", "c1", True)
    hc = body["HostConfig"]
    assert hc["CapDrop"] == ["ALL"] and hc["ReadonlyRootfs"] is True
    assert hc["SecurityOpt"] == ["no-new-privileges", "seccomp={}"]
    assert hc["NetworkMode"] == "none" and body["Hostname"] == "cell"
    assert (hc["Memory"], hc["MemorySwap"], hc["PidsLimit"]) == (64 << 20, 64 << 20, 32)
    assert hc["NanoCpus"] == 500_000_000
    assert hc["Init"] is True  # the command is not PID 1 (signals from inside, reaping)
    assert body["User"] == "4242:4343" and body["Cmd"] == ["bash", "-c", "true"]
    assert body["Labels"]["nixcell.cell"] == "c1"


def test_refused_not_weakened():
    p = make()
    by_fd = MountOp("bind", "/workspace/x", src="/home/u/x", by_fd=True)
    child_then_parent = (MountOp("tmpfs", "/a/b"), MountOp("tmpfs", "/a"))
    cases = {
        "made by fd": (by_fd,),
        "after one beneath it": child_then_parent,
        "two mounts at /a": (MountOp("tmpfs", "/a"), MountOp("tmpfs", "/a")),
        "a bind mount at /proc/self": (MountOp("bind", "/proc/self", src="/x"),),
        "a read-only remount of /nowhere": (MountOp("remount-ro", "/nowhere"),),
    }
    for phrase, ops in cases.items():
        bad = dataclasses.replace(p, mounts=(*p.mounts[:-1], *ops, p.mounts[-1]))
        refused = docker.BACKEND.refusals(bad)
        assert any(phrase in r for r in refused), (phrase, refused)
    host_net = dataclasses.replace(p, host_network=True)
    assert any("host's network" in r for r in docker.BACKEND.refusals(host_net))
    assert docker.BACKEND.refusals(p) == []


def test_seccomp_profile_is_nixcells_rules_one_to_one():
    for profiles in ((), ("debugger",), ("nested-sandbox",)):
        body = json.loads(dockerseccomp.profile(profiles))
        assert body["defaultAction"] == "SCMP_ACT_ALLOW"
        assert "SCMP_ARCH_X86" in body["architectures"]
        rules = seccomp.rules(profiles)
        assert len(body["syscalls"]) == sum(len(r.when) for r in rules)
        names = {n for e in body["syscalls"] for n in e["names"]}
        assert names == {r.syscall for r in rules}
    body = json.loads(dockerseccomp.profile(()))
    alg = [e for e in body["syscalls"] if e["names"] == ["socket"] and e["errnoRet"] == 97]
    assert {"index": 0, "op": "SCMP_CMP_MASKED_EQ", "value": 0xFFFFFFFF, "valueTwo": 38} in [
        a for e in alg for a in e["args"]
    ]  # AF_ALG: refused by nixcell's rules (Docker's default profile allows it)


def test_render_and_pause_program():
    p = make(network={"allow_hosts": ["example.test"]})
    spec = docker.BACKEND.render(p)
    assert spec["create"]["HostConfig"]["NetworkMode"] == "container:<network holder>"
    assert spec["network_holder"]["Cmd"] == ["/pause"]
    assert spec["seccomp_profile"]["defaultAction"] == "SCMP_ACT_ALLOW"
    elf = dockerimage.pause_program()
    assert elf[:4] == b"\x7fELF" and len(elf) == 129
    assert dockerimage.tag().startswith("nixcell/cell:")


def test_query_encoding_matches_urllib():
    import urllib.parse

    from nixcell.sandbox.dockerapi import _urlencode

    query = {
        "all": "1",
        "filters": json.dumps({"label": ["nixcell.pidns=pid:[4]@x y"]}),
        "t": "a/b:c",
    }
    assert _urlencode(query) == urllib.parse.urlencode(query, quote_via=urllib.parse.quote)


def test_bytes_that_are_not_utf8_are_refused_wherever_they_are():
    bad = "x\udcfe"
    for kw in ({"command": ["bash", "-c", bad]}, {"env": {"X": bad}}):
        p = make(**kw)
        found = dockerspec.layout(p, (4242, 4343), "/top", None).refusals
        assert len(found) == 1 and "not UTF-8" in found[0], found
    p = make()
    p = dataclasses.replace(p, mounts=(*p.mounts, MountOp("ro-bind", "/" + bad, src="/dev/null")))
    assert any("not UTF-8" in r for r in dockerspec.layout(p, (1, 1), "/top", None).refusals)
    assert dockerspec.not_utf8(make(command=["bash", "-c", "é ü"])) is None


def test_dockers_own_places_are_reserved():
    def at(dest: str, kind: str = "ro-bind") -> list[str]:
        p = make()
        op = MountOp(kind, dest, src="/dev/null" if kind != "tmpfs" else None)
        return dockerspec.reserved(dataclasses.replace(p, mounts=(*p.mounts, op)))

    for dest, kind in [("/sbin/docker-init", "ro-bind"), ("/sbin", "tmpfs"), ("/sys/x", "ro-bind"),
                       ("/sys", "ro-bind"), ("/sys/fs/cgroup", "tmpfs")]:  # fmt: skip
        assert len(at(dest, kind)) == 1, dest
    for dest, kind in [("/pause", "ro-bind"), ("/.dockerenv", "ro-bind"), ("/sbin/x", "ro-bind"),
                       ("/sys", "tmpfs"), ("/sbinx", "ro-bind")]:  # fmt: skip
        assert at(dest, kind) == [], dest
    assert dockerspec.reserved(make()) == []


def test_daemon_text_is_escaped_and_shapes_are_checked():
    from nixcell.sandbox import dockerapi

    assert dockerapi.clean("a\x1b[31mb\x07\x9bc\u202e") == "a\\x1b[31mb\\x07\\x9bc\\u202e"
    assert dockerapi.clean("plain text: ok é") == "plain text: ok é"
    assert dockerapi.field({"State": {"Pid": 7}}, "State", "Pid", kind=int) == 7
    for answer in ([1], {"State": []}, {"State": {"Pid": "abc"}}, {"State": {"Pid": True}}):
        try:
            dockerapi.field(answer, "State", "Pid", kind=int)
        except dockerapi.DockerError as exc:
            assert "malformed" in exc.message
        else:
            raise AssertionError(answer)


def test_the_netns_gets_bwraps_defaults_back():
    sysctls = docker.network_sysctls()
    assert sysctls["net.ipv4.ip_unprivileged_port_start"] == "1024"
    assert sysctls["net.ipv4.ping_group_range"] == "1 0"

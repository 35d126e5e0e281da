"""The sandbox-exec profile (sandbox/macos.py) of plans of the three project levels: golden files,
what the profile allows and refuses (read by an independent SBPL reader and evaluator), and that
no path — whatever characters a config puts in it — can add or change a rule.

NIXCELL_UPDATE_GOLDEN=1 writes the golden files again instead of comparing with them.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tests.unit import sbplread
from tests.unit.macos_plans import BASH, CLOSURE, HOME, NODE, ROOT, level_plan

from nixcell.errors import SpecError
from nixcell.sandbox import macos, sbpl

GOLDEN = Path(__file__).parent / "golden"
CELL = macos.EXAMPLE_CELL_DIR
VARIANTS = {  # golden file -> (level, network)
    "macos-strict": ("strict", None),
    "macos-standard": ("standard", None),
    "macos-relaxed": ("relaxed", None),
    "macos-standard-no-network": ("standard", False),
    "macos-strict-network": ("strict", True),
}


@pytest.mark.parametrize("name", sorted(VARIANTS))
def test_golden(name):
    level, network = VARIANTS[name]
    text = macos.profile(level_plan(level, network=network))
    path = GOLDEN / f"{name}.sb"
    if os.environ.get("NIXCELL_UPDATE_GOLDEN") == "1":
        path.write_text(text)
    assert path.read_text() == text, f"{path.name} differs (NIXCELL_UPDATE_GOLDEN=1 rewrites it)"


def _profile(level: str, network: bool | None = None, **kw) -> list:
    return sbplread.read(macos.profile(level_plan(level, network=network), **kw))


READ, WRITE, UNLINK, EXEC = "file-read-data", "file-write-data", "file-write-unlink", "process-exec"
# (level, operation, target, allowed): what each level's profile lets a cell do
CASES = [
    # the closure: read and run; nothing else runs
    *[(lv, EXEC, f"{BASH}/bin/bash", True) for lv in ("strict", "standard", "relaxed")],
    *[(lv, READ, f"{NODE}/lib/node", True) for lv in ("strict", "standard", "relaxed")],
    *[(lv, WRITE, f"{BASH}/bin/bash", False) for lv in ("strict", "standard", "relaxed")],
    *[(lv, EXEC, f"{ROOT}/run.sh", False) for lv in ("strict", "standard", "relaxed")],
    *[(lv, EXEC, f"{CELL}/tmp/a.out", False) for lv in ("strict", "standard", "relaxed")],
    *[(lv, EXEC, "/bin/sh", False) for lv in ("strict", "standard", "relaxed")],
    ("standard", "file-map-executable", f"{NODE}/lib/libnode.dylib", True),
    ("standard", "file-map-executable", f"{ROOT}/native.node", False),
    # the cell's own writable areas, in the cell dir
    *[(lv, WRITE, f"{CELL}/tmp/x", True) for lv in ("strict", "standard")],
    ("strict", WRITE, f"{CELL}/workspace/x", True),
    ("strict", WRITE, f"{CELL}/home/.bashrc", True),
    ("strict", UNLINK, f"{CELL}/tmp", False),  # an area itself stays (as a mount point)
    ("strict", WRITE, f"{CELL}/other", False),
    # strict: the project is not there, nor any of the home
    ("strict", READ, f"{ROOT}/src/main.js", False),
    ("strict", "file-read-metadata", ROOT, False),
    ("strict", READ, f"{HOME}/notes.txt", False),
    # standard: the project read-write, what configures the cell read-only
    ("standard", READ, f"{ROOT}/src/main.js", True),
    ("standard", WRITE, f"{ROOT}/src/main.js", True),
    ("standard", UNLINK, f"{ROOT}/src/main.js", True),
    ("standard", UNLINK, ROOT, False),
    *[
        (lv, op, f"{ROOT}/{name}", False)
        for lv in ("standard", "relaxed")
        for op in (WRITE, UNLINK, "file-write-create")
        for name in ("nixcell.toml", ".envrc", ".nixcell/policy.toml", ".git/hooks/pre-commit")
    ],
    ("standard", READ, f"{ROOT}/.nixcell/policy.toml", True),
    ("standard", WRITE, f"{ROOT}/.git/config", False),
    ("standard", WRITE, f"{ROOT}/.git/objects/ab", True),
    # state dirs: writable inside, never replaced themselves
    ("standard", WRITE, f"{ROOT}/.nixcell/local/cache/npm/x", True),
    ("standard", UNLINK, f"{ROOT}/.nixcell/local/cache", False),
    ("standard", "file-write-create", f"{ROOT}/.nixcell/local/cache", False),
    ("standard", "file-write-create", f"{ROOT}/.nixcell/local/other", False),
    # standard: the host home is not there (a fresh one in the cell dir)
    ("standard", READ, f"{HOME}/notes.txt", False),
    ("standard", READ, f"{HOME}/.ssh/id_ed25519", False),
    ("standard", WRITE, f"{CELL}/home/.npmrc", True),
    # relaxed: the home read-only, its secrets hidden, the project read-write
    ("relaxed", READ, f"{HOME}/notes.txt", True),
    ("relaxed", WRITE, f"{HOME}/notes.txt", False),
    ("relaxed", READ, f"{HOME}/.ssh/id_ed25519", False),
    ("relaxed", "file-read-metadata", f"{HOME}/.aws/credentials", False),
    ("relaxed", READ, f"{HOME}/Library/Keychains/login.keychain-db", False),
    ("relaxed", READ, f"{HOME}/Library/Application Support/com.apple.TCC/TCC.db", False),
    ("relaxed", READ, f"{HOME}/.cache/pip/x", False),  # the state dir is there instead
    ("relaxed", WRITE, f"{ROOT}/.nixcell/local/cache/x", True),
    ("relaxed", WRITE, f"{ROOT}/src/main.js", True),
    ("relaxed", READ, f"{CELL}/home/x", False),  # the cell's fresh home is covered by the host's
    # nothing else of the host
    *[(lv, READ, "/Users/bob/notes.txt", False) for lv in ("strict", "standard", "relaxed")],
    *[(lv, READ, "/private/etc/master.passwd", False) for lv in ("strict", "standard", "relaxed")],
    *[(lv, READ, "/Applications/x", False) for lv in ("strict", "standard", "relaxed")],
    # what every macOS process needs
    ("strict", READ, "/usr/lib/libSystem.B.dylib", True),
    ("strict", WRITE, "/usr/lib/libSystem.B.dylib", False),
    ("strict", WRITE, "/dev/null", True),
    ("strict", READ, "/dev/urandom", True),
    ("strict", WRITE, "/dev/disk0", False),
    ("strict", "sysctl-read", "hw.ncpu", True),
    ("strict", "sysctl-read", "kern.bootargs", False),
    ("strict", "sysctl-write", "kern.hostname", False),
    ("strict", "sysctl-write", "kern.tcsm_enable", True),  # V8 writes it (node)
    ("strict", "sysctl-read", "kern.proc.all", False),
    ("strict", "mach-lookup", "com.apple.system.opendirectoryd.libinfo", True),
    ("strict", "mach-lookup", "com.apple.trustd.agent", False),
    ("strict", "mach-lookup", "com.apple.dnssd.service", False),
    ("strict", "mach-lookup", "com.apple.pasteboard.1", False),
    ("strict", "signal", "same-sandbox", True),
    # network: the proxy's port alone, and only with a network; unix sockets in the cell dir
    ("strict", "network-outbound", "ip:localhost:3128", False),
    ("standard", "network-outbound", "ip:localhost:3128", True),
    ("relaxed", "network-outbound", "ip:localhost:3128", True),
    ("standard", "network-outbound", "ip:localhost:22", False),
    ("standard", "network-outbound", "ip:*:443", False),
    ("standard", "network-bind", "ip:localhost:8080", False),
    ("standard", "network-outbound", f"unix:{CELL}/tmp/s.sock", True),
    ("standard", "network-outbound", "unix:/private/var/run/docker.sock", False),
    ("standard", "network-outbound", f"unix:{ROOT}/app.sock", False),
]


@pytest.mark.parametrize(("level", "op", "target", "expected"), CASES)
def test_what_each_level_allows(level, op, target, expected):
    assert sbplread.allowed(_profile(level), op, target) is expected


def test_network_follows_the_plan_and_the_given_port():
    assert not sbplread.allowed(_profile("standard", network=False), "network-outbound", "ip:*:*")
    given = _profile("standard", proxy_port=49152)
    assert sbplread.allowed(given, "network-outbound", "ip:localhost:49152")
    assert not sbplread.allowed(given, "network-outbound", "ip:localhost:3128")
    for level in ("strict", "standard", "relaxed"):  # never the host's whole network
        assert "network*" not in [x for rule in _profile(level) for x in rule]


def _store_plan(**fields):
    from nixcell.host import HostFacts
    from nixcell.plan import plan
    from nixcell.spec import make_spec

    spec = make_spec(command=["bash"], packages=["bash"], **fields)
    facts = HostFacts(501, 20, daemon_socket=True, resolv_conf="/etc/resolv.conf",
                      host_ca="/etc/ssl/cert.pem", store_root="/Users/alice/copy/store")
    return plan(spec, CLOSURE, facts)  # fmt: skip


def test_store_modes_and_the_host_network():
    """The store modes' and the host network's plans (plan.py with planstore.py)."""
    socket = "/nix/var/nix/daemon-socket/socket"
    other_store_path = "/nix/store/" + "d" * 32 + "-other/bin/x"
    closure = sbplread.read(macos.profile(_store_plan()))
    assert not sbplread.allowed(closure, READ, other_store_path)
    readonly = sbplread.read(macos.profile(_store_plan(store="readonly")))
    assert sbplread.allowed(readonly, READ, other_store_path)
    assert not sbplread.allowed(readonly, EXEC, other_store_path)  # still the closure alone runs
    assert not sbplread.allowed(readonly, "network-outbound", f"unix:{socket}")
    shared = sbplread.read(macos.profile(_store_plan(store="shared")))
    assert sbplread.allowed(shared, "network-outbound", f"unix:{socket}")
    assert not sbplread.allowed(shared, "network-outbound", "unix:/nix/var/nix/other")
    assert not sbplread.allowed(shared, WRITE, "/nix/store/x")
    copy = macos.profile(_store_plan(store="copy", store_dir="/Users/alice/copy"))
    assert "store mode copy: no copy can be shown at /nix/store" in copy
    host = _store_plan(host_network=True)
    rules = sbplread.read(macos.profile(host))
    assert sbplread.allowed(rules, "network-outbound", "ip:*:443")
    assert sbplread.allowed(rules, READ, "/private/etc/resolv.conf")  # (bound from the host)
    none = sbplread.read(macos.profile(_store_plan()))
    assert not sbplread.allowed(none, "network-outbound", "ip:*:443")


def test_programs_run_only_from_the_closure():
    """Every rule allowing process-exec names exactly the closure's store paths."""
    for level in ("strict", "standard", "relaxed"):
        rules = [r for r in _profile(level) if r[0] == "allow" and "process-exec*" in r]
        assert len(rules) == 1
        assert sorted(sbplread.texts(rules[0])) == sorted(CLOSURE.paths)


def test_a_terminal_is_the_one_given():
    rules = _profile("standard", tty="/dev/ttys004")
    assert sbplread.allowed(rules, "file-ioctl", "/dev/ttys004")
    assert not sbplread.allowed(rules, "file-write-data", "/dev/ttys005")
    assert not sbplread.allowed(_profile("standard"), "file-write-data", "/dev/ttys004")


def test_cell_dir_and_sources_under_macos_links_are_matched_in_private():
    """macOS matches resolved paths: /tmp, /var and /etc are links into /private."""
    rules = _profile("strict", cell_dir="/var/folders/xy/T/nixcell/c1")
    assert sbplread.allowed(rules, WRITE, "/private/var/folders/xy/T/nixcell/c1/tmp/f")
    assert sbplread.allowed(rules, "file-read-metadata", "/var")
    assert sbplread.allowed(rules, "file-read-metadata", "/private/var/folders/xy/T/nixcell")
    assert macos.host_path("/tmp") == "/private/tmp"
    assert macos.host_path("/etc/hosts") == "/private/etc/hosts"
    assert macos.host_path("/tmpfoo") == "/tmpfoo"
    assert macos.host_path("/Users/a/tmp") == "/Users/a/tmp"


def test_root_run_plans_name_the_host_sources_not_the_stage():
    """As root, binds come through the idmapped stage: the profile names the host paths."""
    from nixcell.host import HostFacts
    from nixcell.plan import plan
    from nixcell.spec import make_spec

    spec = make_spec(command=["bash"], packages=["bash"], mounts=[
        {"source": ROOT, "target": ROOT, "writable": True}])  # fmt: skip
    text = macos.profile(plan(spec, CLOSURE, HostFacts(0, 0, kinds={ROOT: "dir"})))
    rules = sbplread.read(text)
    assert sbplread.allowed(rules, WRITE, f"{ROOT}/x")
    assert "/run/nixcell/stage" not in text


def _spec_plan(mounts, hide=(), kinds=None, **limits):
    from nixcell.host import HostFacts
    from nixcell.plan import plan
    from nixcell.spec import make_spec

    spec = make_spec(command=["bash"], packages=["bash"], hide=list(hide), limits=limits,
                     mounts=[{"source": s, "target": t, "writable": w} for s, t, w in mounts])
    facts = HostFacts(501, 20, kinds=kinds or {s: "dir" for s, _, _ in mounts})  # fmt: skip
    return plan(spec, CLOSURE, facts)


def _spec_profile(mounts, hide=(), kinds=None, **limits) -> list:
    return sbplread.read(macos.profile(_spec_plan(mounts, hide, kinds, **limits)))


# mounts in order, then (operation, host path, allowed): a later mount covers an earlier one
MOUNT_ORDERS = {
    "outer after inner hides the inner": (
        [("/h/inner", "/data/sub", True), ("/h/outer", "/data", False)],
        [(READ, "/h/inner/f", False), (WRITE, "/h/inner/f", False), (READ, "/h/outer/sub/f", True),
         (WRITE, "/h/outer/sub/f", False), (READ, "/h/outer/f", True)],
    ),
    "inner after outer covers a part": (
        [("/h/outer", "/data", True), ("/h/inner", "/data/sub", False)],
        [(READ, "/h/outer/sub/f", False), (WRITE, "/h/outer/sub/f", False),
         (READ, "/h/inner/f", True), (WRITE, "/h/inner/f", False), (WRITE, "/h/outer/f", True)],
    ),
    "the same directory read-only inside itself": (
        [("/h/p", "/h/p", True), ("/h/p/.cfg", "/h/p/.cfg", False)],
        [(WRITE, "/h/p/.cfg/x", False), (READ, "/h/p/.cfg/x", True), (WRITE, "/h/p/y", True),
         (UNLINK, "/h/p/.cfg", False), (UNLINK, "/h/p", False)],
    ),
    "a writable place under a read-only one": (
        [("/h/p", "/h/p", False), ("/h/p/out", "/h/p/out", True)],
        [(WRITE, "/h/p/out/x", True), (WRITE, "/h/p/x", False), (UNLINK, "/h/p/out", False)],
    ),
    "a state dir bound elsewhere, then its parent read-only": (
        [("/h/p", "/h/p", True), ("/h/p/.n/local/c", "/home/cell/.cache", True),
         ("/h/p/.n", "/h/p/.n", False)],
        [(WRITE, "/h/p/.n/local/c/x", True), (WRITE, "/h/p/.n/x", False),
         (READ, "/h/p/.n/x", True), (UNLINK, "/h/p/.n/local/c", False),
         ("file-write-create", "/h/p/.n/local/other", False), (WRITE, "/h/p/x", True)],
    ),
    "a bind into the cell's /tmp": (
        [("/h/d", "/tmp/d", True)],
        [(WRITE, "/h/d/x", True), (READ, f"{CELL}/tmp/d/x", False), (WRITE, f"{CELL}/tmp/x", True)],
    ),
}  # fmt: skip


@pytest.mark.parametrize("case", sorted(MOUNT_ORDERS))
def test_mount_order_becomes_rule_order(case):
    mounts, expected = MOUNT_ORDERS[case]
    rules = _spec_profile(mounts)
    assert [(op, path, sbplread.allowed(rules, op, path)) for op, path, _ in expected] == expected


def test_hidden_paths_are_denied_through_the_mount_that_shows_them():
    """--hide takes a cell path or a host path; either hides the host path behind it."""
    mounts = [("/h/outer", "/data", True), ("/h/inner", "/data/sub", False)]
    kinds = {"/h/outer": "dir", "/h/inner": "dir", "/data/sub/key": "file", "/h/outer/s": "dir"}
    rules = _spec_profile(mounts, hide=["/data/sub/key", "/h/outer/s"], kinds=kinds)
    assert not sbplread.allowed(rules, READ, "/h/inner/key")
    assert not sbplread.allowed(rules, READ, "/h/outer/s/x")
    assert sbplread.allowed(rules, READ, "/h/inner/other")


def test_disk_scratch_maps_to_the_same_cell_dir():
    """--disk's one tmpfs holds the same areas: the profile does not change."""
    assert _spec_profile([], disk="64M") == _spec_profile([])


def test_the_cell_dir_must_be_absolute_and_the_port_a_port():
    with pytest.raises(ValueError, match="absolute"):
        macos.profile(level_plan("strict"), cell_dir="cells/1")
    with pytest.raises(ValueError, match="not a port"):
        macos.profile(level_plan("standard"), proxy_port=70000)


def test_limits_sandbox_exec_cannot_hold_are_named_for_the_backend():
    text = macos.profile(_spec_plan([], memory="256M", pids=64))
    assert "--memory is set; sandbox-exec cannot bound it" in text
    assert "--pids is set" in text and "--cpus" not in text


# Random mount tables against a model of what Linux shows: the profile is never wider.
_HOST = ("/h/a", "/h/a/b", "/h/a/b/c", "/h/d")
_TARGETS = ("/m", "/m/b", "/m/b/c", "/n", "/h/a", "/h/a/b")
_PROBES = (*_HOST, *(f"{h}/f" for h in _HOST), "/h/a/x", "/h/d/b/f", "/m/f")
_MOUNTS = st.lists(
    st.tuples(st.sampled_from(_HOST), st.sampled_from(_TARGETS), st.booleans()),
    max_size=5,
    unique_by=lambda m: m[1],
)


def _linux_view(plan) -> tuple[set[str], set[str]]:
    """(readable, writable) host paths of _PROBES as bwrap's mount table shows them: the
    mount at a cell path is the latest one whose target holds it."""
    ops = [op for op in plan.mounts if op.dest.startswith(("/m", "/n", "/h"))]

    def shown(cell_path: str):
        return next((op for op in reversed(ops) if macos._within(cell_path, op.dest)), None)

    readable, writable = set(), set()
    for op in ops:
        if op.kind not in ("bind", "ro-bind") or op.src == "/dev/null":
            continue
        for probe in _PROBES:
            if macos._within(probe, op.src) and shown(op.dest + probe[len(op.src) :]) is op:
                readable.add(probe)
                if op.kind == "bind":
                    writable.add(probe)
    return readable, writable


@settings(max_examples=300, deadline=None)
@given(mounts=_MOUNTS, hides=st.lists(st.sampled_from(["/m/b", "/m/b/c", "/n/x", "/h/a/b/c"])))
def test_random_mount_tables_are_never_wider_than_linux(mounts, hides):
    from nixcell.host import HostFacts
    from nixcell.plan import plan
    from nixcell.spec import make_spec

    spec = make_spec(command=["bash"], packages=["bash"], hide=sorted(set(hides)),
                     mounts=[{"source": s, "target": t, "writable": w} for s, t, w in mounts])
    facts = HostFacts(501, 20, kinds={**{s: "dir" for s, _, _ in mounts},
                                      **{h: "dir" for h in hides}})  # fmt: skip
    cell_plan = plan(spec, CLOSURE, facts)
    rules = sbplread.read(macos.profile(cell_plan))
    readable, writable = _linux_view(cell_plan)
    for probe in _PROBES:
        if sbplread.allowed(rules, READ, probe):
            assert probe in readable, probe
        if sbplread.allowed(rules, WRITE, probe):
            assert probe in writable, probe
    sources = [s for s, _, _ in mounts]
    pairs = [(a, b) for i, a in enumerate(sources) for j, b in enumerate(sources) if i != j]
    if not any(macos._within(a, b) for a, b in pairs):
        # one view per host path: then the profile is exactly as wide
        assert {p for p in _PROBES if sbplread.allowed(rules, READ, p)} == readable
        assert {p for p in _PROBES if sbplread.allowed(rules, WRITE, p)} == writable


# -- no path can inject a rule -----------------------------------------------------------------

_WRITABLE = st.characters(blacklist_categories=("Cs",), blacklist_characters="/\0").filter(
    lambda c: not (ord(c) < 0x20 or 0x7F <= ord(c) < 0xA0)
)
_SEGMENT = st.text(_WRITABLE, min_size=1, max_size=24).filter(lambda s: s not in (".", ".."))
_NASTY = st.sampled_from(['"', "\\", ")", "(", ";", '\\"', '")(allow default)(', "#|", '#"'])
SEGMENTS = st.one_of(_SEGMENT, st.lists(st.one_of(_SEGMENT, _NASTY), min_size=1).map("".join))


def _shape(text: str, project: str) -> list:
    """The profile read back, with the project's path written as a placeholder."""

    def swap(item):
        if isinstance(item, sbplread.Text):
            return sbplread.Text(item.value.replace(project, "<PROJECT>"))
        if isinstance(item, list):
            return [swap(x) for x in item]
        return item

    return [swap(form) for form in sbplread.read(text)]


@settings(max_examples=150, suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(segment=SEGMENTS, level=st.sampled_from(["standard", "relaxed"]))
def test_no_path_adds_or_changes_a_rule(segment, level):
    """A project whose name holds quotes, backslashes, parentheses or comment starters gives
    the same rules as a plain one: every path literal reads back as the path itself."""
    project = f"{HOME}/src/{segment}"
    plain = f"{HOME}/src/plain-project"
    text = macos.profile(level_plan(level, root=project))
    reference = macos.profile(level_plan(level, root=plain))
    assert _shape(text, project) == _shape(reference, plain)
    literals = sbplread.texts(sbplread.read(text))
    assert project in literals and f"{project}/.nixcell" in literals


@given(text=st.text(_WRITABLE, max_size=40))
def test_quote_reads_back_as_the_text(text):
    assert sbplread.read(f"(x {sbpl.quote(text)})") == [["x", sbplread.Text(text)]]


@pytest.mark.parametrize("bad", ["\n", "\r", "\t", "\x1b", "\x7f", "\x85", "\ud800"])
def test_unwritable_characters_are_refused_in_one_line(bad):
    with pytest.raises(SpecError) as err:
        sbpl.quote(f"/Users/a{bad}b")
    assert "\n" not in str(err.value) and "macOS sandbox profile" in str(err.value)
    if bad != "\ud800":  # (a spec refuses that one itself)
        with pytest.raises(SpecError, match="macOS sandbox profile"):
            macos.profile(level_plan("standard", root=f"{HOME}/src/a{bad}b"))


def test_symbols_are_never_made_from_data():
    with pytest.raises(ValueError, match="not an SBPL symbol"):
        sbpl.render(("allow", "file-read*) (allow default"))
    with pytest.raises(ValueError, match="one line"):
        sbpl.comment("x\n(allow default)")

"""The backend seam (sandbox/backends.py, backendrun.py) without running a cell: selection,
the fail-closed check, the plan-only render of every backend, and the engine features only bwrap
has. Availability answers are set in ``backends._cache`` (the per-process cache of each
backend's probe): that is the selection logic's input, not the sandbox."""

from __future__ import annotations

import pytest

from nixcell import backendrun
from nixcell.errors import LimitUnavailableError, NixcellError, SandboxError
from nixcell.host import HostFacts
from nixcell.nix.closure import Closure
from nixcell.plan import plan
from nixcell.sandbox import backends
from nixcell.spec import make_spec

ENV = "/nix/store/" + "a" * 32 + "-nixcell-env"
CLOSURE = Closure(ENV, (ENV,), ("bash",), "offline package set", ("bash", "sh"))
YES, NO = backends.Availability(True, "here"), backends.Availability(False, "not here")


@pytest.fixture
def hosts(monkeypatch):
    """hosts(bwrap=True, ...): this process believes exactly those backends run here."""

    def _set(**ok: bool) -> None:
        table = {name: YES if ok.get(name) else NO for name in backends.NAMES}
        monkeypatch.setattr(backends, "_cache", table)

    return _set


def planned(backend: str, **fields: object):
    fields.setdefault("command", [f"{ENV}/bin/bash", "-c", "true"])
    spec = make_spec(packages=["bash"], backend=backend, **fields)
    return plan(spec, CLOSURE, HostFacts(uid=0, gid=0, backend=backend))


@pytest.mark.parametrize(
    ("running", "chosen"),
    [
        ({"bwrap", "gvisor", "docker", "systemd", "microvm"}, "bwrap"),
        ({"gvisor", "docker", "systemd"}, "gvisor"),
        ({"docker", "systemd", "microvm"}, "docker"),
        ({"systemd", "microvm"}, "systemd"),
    ],
)
def test_auto_takes_the_first_backend_that_runs_here(hosts, running, chosen):
    hosts(**dict.fromkeys(running, True))
    assert backends.select_auto() == chosen


def test_auto_never_picks_the_microvm_and_says_why_nothing_runs(hosts):
    hosts(microvm=True)
    with pytest.raises(SandboxError) as err:
        backends.select_auto()
    message = err.value.message
    assert "\n" not in message
    for name in backends.AUTO_ORDER:
        assert f"{name}: not here" in message


def test_auto_resolves_into_the_plan(hosts):
    from nixcell.host import _backend

    hosts(gvisor=True)
    assert _backend("auto") == "gvisor"
    assert _backend("docker") == "docker"  # an explicit name is never probed


def test_check_refuses_an_unavailable_backend_in_one_line(hosts):
    hosts(bwrap=True)
    with pytest.raises(SandboxError, match=r"^the systemd backend cannot run here: not here$"):
        backends.check(planned("systemd"))


def test_check_refuses_a_plan_part_the_backend_cannot_enforce(hosts):
    hosts(systemd=True)
    with pytest.raises(LimitUnavailableError) as err:
        backends.check(planned("systemd", limits={"disk": "64M"}))
    assert "--disk" in err.value.message and "\n" not in err.value.message
    assert backends.check(planned("systemd")).name == "systemd"


def test_an_unknown_backend_is_one_line():
    with pytest.raises(SandboxError, match="unknown backend 'lxc'"):
        backends.get("lxc")


@pytest.mark.parametrize("name", backends.NAMES)
def test_every_backend_renders_from_the_plan_alone(name):
    """--dry-run --json works for every backend, run here or not."""
    described = backendrun.describe(planned(name))
    assert described["name"] == name
    assert isinstance(described["refusals"], list)
    assert planned(name).to_json()["backend"] == name


ENGINE_ONLY = [
    ({"pass_fds": (5,)}, "inherited file descriptors"),
    ({"namespaces": object()}, "held namespaces"),
    ({"terminal": True}, "a job's terminal"),
    ({"trace": True}, "--debug's tracing"),
]


@pytest.mark.parametrize("name", [n for n in backends.NAMES if n != "bwrap"])
@pytest.mark.parametrize(("asked", "phrase"), ENGINE_ONLY)
def test_engine_features_only_bwrap_has_are_refused(name, asked, phrase):
    with pytest.raises(LimitUnavailableError) as err:
        backendrun.refuse_unsupported(planned(name), **asked)
    assert phrase in err.value.message and "--backend bwrap" in err.value.message
    assert "\n" not in err.value.message


@pytest.mark.parametrize("name", [n for n in backends.NAMES if n != "bwrap"])
def test_a_terminal_of_its_own_is_refused(name):
    import dataclasses

    with pytest.raises(LimitUnavailableError, match=r"a terminal of its own \(-i\)"):
        backendrun.refuse_unsupported(dataclasses.replace(planned(name), tty="always"))
    backendrun.refuse_unsupported(planned(name))  # nothing asked: nothing refused


def test_refusals_are_nixcell_errors():
    assert issubclass(LimitUnavailableError, NixcellError)
    assert issubclass(SandboxError, NixcellError)

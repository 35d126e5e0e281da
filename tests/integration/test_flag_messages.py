"""Property: whatever value a user gives any `nixcell run` flag, the answer is a plan or one
line naming the flag's own spelling — never a CellSpec field name, pydantic's wording or a
traceback. Runs the real CLI entry point in-process (``--dry-run``: no cell starts) so that
hypothesis can try many values per flag."""

from __future__ import annotations

import re

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from nixcell.cli.entry import main
from nixcell.nix.pins import host_has_nixpkgs
from nixcell.spec import CellSpec, Limits, Mount, Network

FIELDS = {
    name
    for model in (CellSpec, Limits, Mount, Network)
    for name in model.model_fields
    if "_" in name  # distinctive spellings; plain words (target, command) are English too
}
LEAKS = (
    *sorted(FIELDS),
    "mounts.",
    "limits.",
    "network.",
    "pydantic",
    "validation error",
    "Value error",
    "Input should",
    "internal error",
    "Traceback",
    "bwrap:",
)
FLAGS = [
    "--memory", "--cpus", "--pids", "--timeout", "--disk", "--cwd", "--hide", "--bind",
    "--ro-bind", "--workdir", "-e", "--pass-env", "--hardening-profile", "-p", "--nixpkgs",
    "--allow-host", "--deny-host", "--allow-cidr", "--resolve", "--policy", "--upstream-ca",
    "--credential",
]  # fmt: skip
NETWORK = {"--deny-host", "--resolve", "--credential", "--upstream-ca"}  # need an allow too
# pins that would make nix fetch from the network: never tried here
_FETCHING = re.compile(r"^(nixos|nixpkgs)-|^[0-9a-f]{40}")

values = st.one_of(
    st.text(max_size=40),
    st.text(alphabet="/.:-_=[]#*@0123456789abcxyzKMG ", max_size=40),
    st.sampled_from(["", " ", "-1", "0", "nan", "inf", "1e999", "/", "..", "/proc", "a=b", "K="]),
)


@pytest.fixture(scope="module", autouse=True)
def _offline_only(offline_set):
    if host_has_nixpkgs():  # a real nixpkgs would let some values reach nix fetchers
        pytest.skip("this host has a nixpkgs: random -p values could make nix fetch")


@pytest.mark.parametrize("flag", FLAGS)
def test_any_value_of_any_flag_gets_a_plan_or_one_line_naming_the_flag(flag, capsys):
    @settings(
        max_examples=50,
        deadline=None,
        suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    )
    @given(value=values)
    def check(value: str) -> None:
        if flag == "--nixpkgs" and _FETCHING.match(value):
            return
        extra = ["--allow-host", "a.test"] if flag in NETWORK else []
        argv = ["run", "-p", "bash", *extra, flag, value, "--dry-run", "--", "true"]
        with pytest.raises(SystemExit) as exit_:
            main(argv)
        out = capsys.readouterr()
        code = exit_.value.code
        assert code in (0, 1, 2), (argv, code, out.err)
        for leak in LEAKS:  # (hypothesis also tries this file's own literals as values: a
            # message that quotes the value back is not a leak of the word the value holds)
            assert leak not in out.err.replace(value, "") or leak in value, (argv, out.err)
        if code:
            lines = [ln for ln in out.err.split("\n")[:-1] if "offline package set (host" not in ln]
            assert len(lines) == 1 and lines[0].startswith("nixcell: "), (argv, out.err)

    check()

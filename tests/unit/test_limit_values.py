"""Numeric limits: every value that would wrap, overflow or make no sense is refused in the spec.

The spec is what every front compiles to (CLI flags, MCP config, later the job API), so the table
runs through ``make_spec``; the CLI side is in tests/integration/test_trusted_state.py.
"""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from nixcell.errors import UsageError
from nixcell.spec import MAX_PIDS, make_spec
from nixcell.units import MAX_DURATION, MAX_SIZE


def limits(**values):
    return make_spec(command=["true"], packages=["bash"], limits=values).limits


REFUSED = [
    ("memory", "16777216T"),  # 2**64: wraps in the kernel's page counter
    ("memory", "1048577T"),
    ("memory", 2**64),
    ("memory", "99999999999999999999"),
    ("memory", "1M"),
    ("memory", "0"),
    ("memory", "-1G"),
    ("memory", "1.5.5G"),
    ("memory", "12X"),
    ("memory", "256 MBB"),
    ("memory", "nan"),
    ("memory", float("inf")),
    ("memory", True),
    ("disk", "0"),
    ("disk", "0.0001K"),
    ("disk", "20000000T"),
    ("disk", 2**70),
    ("timeout", "1e300"),
    ("timeout", 1e300),
    ("timeout", float("nan")),
    ("timeout", float("inf")),
    ("timeout", "0s"),
    ("timeout", "-3s"),
    ("timeout", 0.00001),
    ("timeout", "366d"),
    ("timeout", "9000h"),
    ("timeout", "30 secs"),
    ("timeout", False),
    ("cpus", float("nan")),
    ("cpus", float("inf")),
    ("cpus", "inf"),
    ("cpus", 1e308),
    ("cpus", 0),
    ("cpus", -1),
    ("cpus", 0.001),
    ("cpus", 4097),
    ("cpus", True),
    ("pids", 1),
    ("pids", 0),
    ("pids", -5),
    ("pids", 2**63),
    ("pids", 10**400),
    ("pids", MAX_PIDS + 1),
    ("pids", 2.5),
    ("pids", "0x10"),
    ("pids", True),
]


@pytest.mark.parametrize(("field", "value"), REFUSED, ids=[f"{f}={v!r}"[:40] for f, v in REFUSED])
def test_values_that_wrap_or_make_no_sense_are_refused(field, value):
    with pytest.raises(UsageError) as info:  # SpecError is a UsageError: exit 2
        limits(**{field: value})
    assert info.value.exit_code == 2
    message = str(info.value)
    assert "\n" not in message and len(message) < 200 and field in message


ACCEPTED = [
    ("memory", "256M", 256 << 20),
    ("memory", "1.5G", 3 << 29),
    ("memory", "1048576T", MAX_SIZE),
    ("memory", "4MiB", 4 << 20),
    ("disk", "1", 1),
    ("timeout", "500ms", 0.5),
    ("timeout", "8760h", MAX_DURATION),
    ("cpus", "1.5", 1.5),
    ("cpus", 4096, 4096.0),
    ("pids", 2, 2),
    ("pids", "64", 64),
    ("pids", MAX_PIDS, MAX_PIDS),
]


@pytest.mark.parametrize(("field", "value", "want"), ACCEPTED)
def test_sane_values_are_kept_exactly(field, value, want):
    assert getattr(limits(**{field: value}), field) == want


@given(st.integers(min_value=1, max_value=10**30), st.sampled_from(["", "K", "M", "G", "T"]))
def test_sizes_are_exact_and_bounded(number, unit):
    factor = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}[unit]
    want = number * factor
    text = f"{number}{unit}"
    if want > MAX_SIZE or len(str(number)) > 18:
        with pytest.raises(UsageError):
            limits(disk=text)
    else:
        assert limits(disk=text).disk == want


@given(st.floats(allow_nan=True, allow_infinity=True))
def test_any_float_timeout_is_in_range_or_refused(value):
    try:
        got = limits(timeout=value).timeout
    except UsageError:
        assert not (math.isfinite(value) and 0.001 <= value <= MAX_DURATION)
    else:
        assert got is not None and math.isfinite(got) and 0.001 <= got <= MAX_DURATION


@given(st.one_of(st.floats(), st.integers(min_value=-(2**80), max_value=2**80)))
def test_any_cpus_or_pids_number_is_in_range_or_refused(value):
    for field, low, high in (("cpus", 0.01, 4096), ("pids", 2, MAX_PIDS)):
        try:
            got = getattr(limits(**{field: value}), field)
        except UsageError:
            continue
        assert low <= got <= high

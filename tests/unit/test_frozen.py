"""``quiet.Frozen``, the warm path's stand-in for ``@dataclass(frozen=True)``: the cgroup records
built on it must behave as the frozen dataclasses they replaced (equal by value, hashable,
immutable, readable reprs), or plans and ``doctor`` comparisons would silently change."""

import copy
import pickle
from pathlib import Path

import pytest

from nixcell.sandbox.cgroupfs import CgroupHost, ControllerSite, Mount
from nixcell.sandbox.cgrouplimits import CgroupDir, CgroupLimits

# (a record, an equal one built another way, one differing in a single field)
CASES = [
    (Mount(Path("/m"), "/", "v1"), Mount(Path("/m"), "/", "v1", frozenset()),
     Mount(Path("/m"), "/", "v1", frozenset({"memory"}))),
    (ControllerSite("pids", "v2", Path("/b")), ControllerSite("pids", "v2", Path("/b"), None),
     ControllerSite("pids", None, None, "why")),
    (CgroupHost("v2"), CgroupHost("v2", {}), CgroupHost("v1")),
    (CgroupLimits(memory=64 << 20), CgroupLimits(64 << 20, None, None), CgroupLimits(pids=1)),
    (CgroupDir(Path("/c"), "v1", ("memory",)), CgroupDir(Path("/c"), "v1", ("memory",)),
     CgroupDir(Path("/c"), "v1", ("memory", "pids"))),
]  # fmt: skip


@pytest.mark.parametrize(("record", "same", "other"), CASES)
def test_a_frozen_record_is_a_value(record, same, other):
    assert record == same and same == record
    assert record != other and other != same
    assert record != tuple(record._values())  # another type is never equal
    if not isinstance(record, CgroupHost):  # (its dict of sites is not hashable, as before)
        assert hash(record) == hash(same) and len({record, same, other}) == 2
    for name in type(record)._fields:
        assert f"{name}=" in repr(record) and repr(record).startswith(type(record).__name__ + "(")
        with pytest.raises(AttributeError, match="frozen"):
            setattr(record, name, None)
        with pytest.raises(AttributeError, match="frozen"):
            delattr(record, name)
    with pytest.raises(AttributeError):
        record.unknown = 1  # (slots: no stray attributes either)
    for copied in (copy.copy(record), copy.deepcopy(record), pickle.loads(pickle.dumps(record))):
        assert copied == record and type(copied) is type(record)


def test_limits_are_still_validated_on_construction():
    from nixcell.errors import UsageError

    for kwargs in ({"memory": 1}, {"pids": 0}, {"cpus": 0.001}, {"memory": True}):
        with pytest.raises(UsageError):
            CgroupLimits(**kwargs)

"""The subordinate range of root-run cells: refused whenever anyone else could own its ids."""

from __future__ import annotations

import pytest

from nixcell.sandbox.identity import DEFAULT_BASE, DEFAULT_COUNT, IdRange, check_range

RNG = IdRange(DEFAULT_BASE, DEFAULT_COUNT, "default")
END = DEFAULT_BASE + DEFAULT_COUNT
PASSWD = "root:x:0:0::/root:/bin/sh\nalice:x:1000:1000::/home/alice:/bin/sh\n"
GROUP = "root:x:0:\nalice:x:1000:\n"


@pytest.mark.parametrize(
    ("subuid", "subgid", "passwd", "group", "why"),
    [
        ("", "", PASSWD, GROUP, None),
        ("alice:100000:65536\n", "alice:100000:65536\n", PASSWD, GROUP, None),
        (f"nixcell:{DEFAULT_BASE}:{DEFAULT_COUNT}\n", "", PASSWD, GROUP, None),  # ours
        (f"alice:{DEFAULT_BASE}:1\n", "", PASSWD, GROUP, "subuid gives 'alice'"),
        (f"bob:{END - 1}:10\n", "", PASSWD, GROUP, "subuid gives 'bob'"),  # overlaps the end
        (f"bob:{DEFAULT_BASE - 10}:11\n", "", PASSWD, GROUP, "subuid gives 'bob'"),  # the start
        (f"bob:0:{1 << 32 - 1}\n", "", PASSWD, GROUP, "subuid gives 'bob'"),  # all of it
        ("", f"carol:{DEFAULT_BASE + 5}:5\n", PASSWD, GROUP, "subgid gives 'carol'"),
        ("", "", PASSWD + f"svc:x:{DEFAULT_BASE + 7}:7::/:/bin/sh\n", GROUP, "user 'svc'"),
        ("", "", PASSWD, GROUP + f"grp:x:{END - 1}:\n", "group 'grp'"),
        ("", "", PASSWD + f"x:x:{END}:1::/:/bin/sh\n", GROUP, None),  # just past the range
        ("# comment\n\ngarbage\nalice:x:y\n", "", PASSWD, GROUP, None),  # unreadable lines
    ],
)
def test_range_is_refused_when_another_owner_can_reach_it(subuid, subgid, passwd, group, why):
    got = check_range(RNG, subuid, subgid, passwd, group)
    if why is None:
        assert got is None
    else:
        assert got is not None and why in got


@pytest.mark.parametrize("rng", [IdRange(0, 65536, "x"), IdRange(1000, 10, "x"),
                                 IdRange(0xFFFFFF00, 0x1000, "x"), IdRange(DEFAULT_BASE, 0, "x")])
def test_unusable_ranges_are_refused(rng):
    assert check_range(rng, "", "", "", "") is not None

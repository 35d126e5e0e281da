"""platforms.py: cells are refused on macOS; NIXCELL_PLATFORM can only add the refusal."""

from __future__ import annotations

import sys

import pytest

from nixcell import platforms
from nixcell.errors import PlatformError

# (sys.platform, NIXCELL_PLATFORM or None, refused)
CASES = [
    ("linux", None, False),
    ("linux", "darwin", True),
    ("linux", "linux", False),
    ("linux", "Darwin", False),
    ("linux", "", False),
    ("darwin", None, True),
    ("darwin", "linux", True),  # never lifted
    ("darwin", "", True),
    ("darwin", "none", True),
]


@pytest.mark.parametrize(("system", "forced", "refused"), CASES)
def test_refusal(monkeypatch, system, forced, refused):
    monkeypatch.setattr(sys, "platform", system)
    if forced is None:
        monkeypatch.delenv("NIXCELL_PLATFORM", raising=False)
    else:
        monkeypatch.setenv("NIXCELL_PLATFORM", forced)
    assert platforms.is_macos() is refused
    if refused:
        with pytest.raises(PlatformError) as err:
            platforms.refuse_cells()
        assert str(err.value) == platforms.MACOS_REFUSAL and "\n" not in str(err.value)
    else:
        platforms.refuse_cells()

"""Probe: "the root must be ... writable by nobody else" (docs/scale-out.md). check_root looks at
the root directory itself; what decides what cells run is also below it (ROOT/nix, its database
ROOT/nix/var/nix/db: whoever writes it registers any path valid) and above it (a parent others
may write: they can rename the root away and put another directory, or a link, in its place
between the check and the bind). Each is refused in one line, as a group-writable root is."""

from __future__ import annotations

import os

import pytest
from tests.conftest import cli
from tests.integration.nixcache import remove_root, seeded_root
from tests.integration.review13b.rootrig import base_closure

pytestmark = [pytest.mark.integration, pytest.mark.root]


@pytest.fixture
def top(offline_set):
    """A directory holding a seeded root at ``top/root``."""
    made = seeded_root(base_closure())
    os.mkdir(os.path.join(made, "root"), 0o755)
    for name in os.listdir(made):
        if name != "root":
            os.rename(os.path.join(made, name), os.path.join(made, "root", name))
    yield made
    remove_root(made)


@pytest.mark.parametrize("part", ["..", "nix", "nix/var/nix/db"])
def test_a_root_others_could_change_below_or_above_is_refused(top, part) -> None:
    root = os.path.join(top, "root")
    where = os.path.normpath(os.path.join(root, part))
    os.chmod(where, 0o777)  # (no sticky bit: others may rename and replace entries)
    proc = cli(
        "run", "-p", "bash", "--", "bash", "-c", "echo ran", env={"NIXCELL_NIX_ROOT": root},
        input=b"",
    )  # fmt: skip
    err = proc.stderr.decode()
    assert proc.returncode != 0 and b"ran" not in proc.stdout, (
        f"ran from a root whose {where} anyone may write"
    )
    assert "Traceback" not in err, err

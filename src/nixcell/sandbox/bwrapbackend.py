"""The bwrap backend's face on the seam (``backends.py``); its executor is ``runner``/``bwrap.py``.

bwrap enforces every part a plan can hold (the planner makes plans for it), so it refuses
nothing; its availability is the doctor's own check: a bwrap ≥ 0.8 that can make namespaces.
"""

from __future__ import annotations

import re
import shutil
import subprocess

from nixcell.sandbox.backends import Availability

TYPE_CHECKING = False
if TYPE_CHECKING:
    from nixcell.plan import Plan

MIN_BWRAP = (0, 8)


class BwrapBackend:
    name = "bwrap"

    def availability(self) -> Availability:
        path = shutil.which("bwrap")
        if path is None:
            return Availability(False, "bwrap is not installed (apt install bubblewrap)")
        try:
            version = subprocess.run(
                [path, "--version"], capture_output=True, text=True, timeout=10
            )
            probe = subprocess.run(
                [path, "--unshare-all", "--uid", "1000", "--ro-bind", "/", "/", "true"],
                capture_output=True, text=True, timeout=30,
            )  # fmt: skip
        except (OSError, subprocess.TimeoutExpired) as exc:
            return Availability(False, f"bwrap did not run: {exc}")
        finally:
            from nixcell.sandbox.reap import reap_orphans

            reap_orphans()  # bwrap's pid-1 may be orphaned to us (a subreaper)
        match = re.search(r"(\d+)\.(\d+)", version.stdout)
        if not match or (int(match.group(1)), int(match.group(2))) < MIN_BWRAP:
            return Availability(False, f"{path} is too old (need >= 0.8)")
        if probe.returncode != 0:
            why = probe.stderr.strip().splitlines()[-1:] or ["failed"]
            return Availability(False, f"bwrap cannot make namespaces here: {why[0]}")
        return Availability(True, f"{version.stdout.strip()} ({path})")

    def refusals(self, plan: Plan) -> list[str]:
        return []

    def render(self, plan: Plan) -> dict[str, object]:
        return {"argv": ["bwrap", *plan.bwrap_args()]}

    def open(self, plan: Plan, cell_id: str, host_id: tuple[int, int] | None) -> object:
        raise NotImplementedError("bwrap cells run through runner.execute")


BACKEND = BwrapBackend()

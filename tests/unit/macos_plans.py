"""Plans of the three project levels (PROJECT-FORMAT.md), made purely, for the macOS profile
tests: a project at /Users/alice/src/app, the invoking user's home /Users/alice."""

from __future__ import annotations

from nixcell.host import HostFacts
from nixcell.nix.closure import Closure
from nixcell.plan import CELL_HOME, Plan, plan
from nixcell.spec import make_spec

HOME = "/Users/alice"
ROOT = f"{HOME}/src/app"
ENV = "/nix/store/" + "a" * 32 + "-nixcell-env"
BASH = "/nix/store/" + "b" * 32 + "-bash-5.2"
NODE = "/nix/store/" + "c" * 32 + "-nodejs-22"
CLOSURE = Closure(
    ENV, (ENV, BASH, NODE), ("bash", "nodejs"), "offline package set", ("bash", "node")
)
SENSITIVE = (".ssh", ".gnupg", ".aws")
STATE = {"cache": ".cache", "config": ".config", "data": ".local/share", "state": ".local/state"}


def _project(root: str) -> list[dict[str, object]]:
    """The project read-write, the state dirs at the cell's XDG places, then (in the project
    layer's order) .git onto itself and what configures the cell read-only."""
    mounts: list[dict[str, object]] = [{"source": root, "target": root, "writable": True}]
    for name, place in STATE.items():
        source = f"{root}/.nixcell/local/{name}"
        mounts.append({"source": source, "target": f"{CELL_HOME}/{place}", "writable": True})
    mounts.append({"source": f"{root}/.git", "target": f"{root}/.git", "writable": True})
    for name in ("nixcell.toml", ".envrc", ".nixcell", ".git/hooks", ".git/config"):
        mounts.append({"source": f"{root}/{name}", "target": f"{root}/{name}"})
    return mounts


def _xdg() -> dict[str, str]:
    names = {"cache": "CACHE", "config": "CONFIG", "data": "DATA", "state": "STATE"}
    return {f"XDG_{names[n]}_HOME": f"{CELL_HOME}/{p}" for n, p in STATE.items()}


def level_plan(level: str, *, network: bool | None = None, root: str = ROOT) -> Plan:
    """The plan of ``level`` (network: the level's default unless given)."""
    mounts: list[dict[str, object]] = []
    hide: list[str] = []
    env: dict[str, str] = {}
    cwd = "/workspace"
    if level == "relaxed":
        mounts.append({"source": HOME, "target": CELL_HOME})
        hide = [f"{HOME}/{name}" for name in SENSITIVE]
    if level in ("standard", "relaxed"):
        mounts += _project(root)
        env = _xdg()
        cwd = f"{root}/lib"
    with_network = level != "strict" if network is None else network
    spec = make_spec(
        command=["node", "--version"],
        packages=["bash", "nodejs"],
        mounts=mounts,
        hide=hide,
        env=env,
        cwd=cwd,
        network={"allow_hosts": ["*"]} if with_network else None,
    )
    kinds = {m["source"]: "dir" for m in mounts}
    kinds.update({f"{root}/{n}": "file" for n in ("nixcell.toml", ".envrc", ".git/config")})
    kinds.update({h: "dir" for h in hide})
    host = HostFacts(uid=501, gid=20, term="xterm", kinds=kinds, ca_pem="CA")
    return plan(spec, CLOSURE, host)

"""The levels as named pieces (jail.nix style): each piece adds one thing to a ``Draft`` of
the cell, and a level is the list of its pieces. ``strict``/``standard``/``relaxed`` keep
nixcage's meaning; the defences are nixcell's (docs/project.md, "Levels").

Every piece binds only what exists: bwrap makes a missing mount point itself, and inside the
project (host-visible) or under a read-only home that would either leave a file on the host or
fail. So a hidden path that is missing is skipped (there is nothing to hide), and a state dir
whose place under a read-only home is missing is bound beside it (``/var/lib/cell``).
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass, field

from nixcell.errors import UsageError
from nixcell.plan import CELL_HOME
from nixcell.project.state import STATE_NAMES

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable

    from nixcell.project.load import Project

# relaxed: the host home is visible read-only, except these (when they exist): keys, the
# credential files of common tools, shell and REPL histories (typed secrets). ~/.config and
# ~/.local/share are covered by the state binds anyway.
SENSITIVE = (
    ".ssh",
    ".gnupg",
    ".aws",
    ".azure",
    ".oci",
    ".kube",
    ".docker",
    ".netrc",
    ".git-credentials",
    ".config/gcloud",
    ".password-store",
    ".npmrc",
    ".yarnrc.yml",
    ".pypirc",
    ".cargo/credentials",
    ".cargo/credentials.toml",
    ".gem/credentials",
    ".m2/settings.xml",
    ".m2/settings-security.xml",
    ".gradle/gradle.properties",
    ".vault-token",
    ".terraform.d/credentials.tfrc.json",
    ".terraformrc",
    ".s3cfg",
    ".boto",
    ".pgpass",
    ".my.cnf",
    ".claude/.credentials.json",
    ".codex/auth.json",
    ".bash_history",
    ".zsh_history",
    ".python_history",
    ".node_repl_history",
    ".psql_history",
    ".mysql_history",
    ".sqlite_history",
)
# where each state dir is seen in the cell, and the XDG variable naming it
STATE_PLACES = {
    "cache": (".cache", "XDG_CACHE_HOME"),
    "config": (".config", "XDG_CONFIG_HOME"),
    "data": (".local/share", "XDG_DATA_HOME"),
    "state": (".local/state", "XDG_STATE_HOME"),
}
BESIDE_HOME = "/var/lib/cell"  # state dirs whose place under a read-only home is missing
# read-only inside the cell, when they exist: what configures the cell or runs on the host.
# All of .git, not only hooks/ and config: git also takes its config and hooks from a
# "commondir" file, from modules/*/ (submodules, reached from an index the cell could write)
# and worktrees/*/, any of which a cell writing .git could plant (docs/project.md).
PROTECTED = (".envrc", ".nixcell", ".git")


@dataclass
class Draft:
    """The cell being put together: spec fields in host terms, before flags are merged."""

    project: Project
    where: str  # the host directory the user stands in
    home: str  # the host home
    cwd: str = "/workspace"
    project_mounted: bool = False
    home_mode: str = "tmpfs"  # "tmpfs" | "readonly"
    network: str = "none"  # the level's default network mode
    mounts: list[dict[str, object]] = field(default_factory=list)
    hide: list[str] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)
    skipped: list[str] = field(default_factory=list)
    # host paths whose presence or kind shaped the draft: a cached plan is stale when one of
    # them changes (a ~/.ssh made since must be hidden, a new .envrc bound read-only)
    considered: list[str] = field(default_factory=list)

    def kind(self, path: str) -> str | None:
        """``lstat`` kind of a host path ("link" | "dir" | "file" | None), remembered."""
        self.considered.append(path)
        return _lkind(path)

    def cell_path(self, host_path: str) -> str:
        """Where a host path is seen: under the host home -> under the cell's home."""
        if _within(host_path, self.home) and not _within(host_path, self.project.root):
            return os.path.normpath(CELL_HOME + host_path[len(self.home) :])
        return host_path

    def bind(self, source: str, target: str, writable: bool) -> None:
        self.mounts.append({"source": source, "target": target, "writable": writable})

    def to_hide(self, path: str) -> str | None:
        """What hiding ``path`` means: itself, or, for a symlink (a dotfile manager's
        ``~/.ssh -> dotfiles/ssh``), the place it leads to, since that is what the cell would
        read through it (and bwrap, following the link inside the cell, would fail or hide
        something else); None when the cell cannot see it anyway."""
        kind = self.kind(path)
        if kind == "link":
            real = os.path.realpath(path)
            self.considered.append(real)
            for m in self.mounts:
                source = str(m["source"])
                top = os.path.realpath(source)
                if _within(real, top) and _lkind(real) is not None:
                    return os.path.normpath(source + real[len(top) :])
            return None
        if kind is None or not any(_within(path, str(m["source"])) for m in self.mounts):
            return None
        return path


def _within(path: str, ancestor: str) -> bool:
    return path == ancestor or path.startswith(ancestor.rstrip("/") + "/")


def _lkind(path: str) -> str | None:
    try:
        mode = os.lstat(path).st_mode
    except OSError:
        return None
    return "link" if stat.S_ISLNK(mode) else "dir" if stat.S_ISDIR(mode) else "file"


# -- the pieces ------------------------------------------------------------------------------


def fresh_workspace(d: Draft) -> None:
    """The project is not mounted; the cell starts in an empty /workspace."""
    d.cwd = "/workspace"


def project_rw(d: Draft) -> None:
    """The project read-write at its own host path; the cell starts where the user stands."""
    root = d.project.root
    d.bind(root, root, True)
    d.project_mounted = True
    d.cwd = d.where if _within(d.where, root) else root


def tmpfs_home(d: Draft) -> None:
    """An empty home of the cell's own (the plan's default)."""
    d.home_mode = "tmpfs"


def readonly_home(d: Draft) -> None:
    """The host home, read-only, at the cell's home."""
    if os.path.normpath(d.home) == "/":
        raise UsageError("level 'relaxed' shows your home read-only, and $HOME is /: refused")
    if os.path.isdir(d.home):
        d.bind(d.home, CELL_HOME, False)
        d.home_mode = "readonly"


def hide_sensitive(d: Draft) -> None:
    """Credentials and keys under the visible home stay hidden, nixcell's own dirs too."""
    from nixcell import paths

    if d.home_mode != "readonly":
        return
    own = (paths.state_root(), paths.cache_root(), str(paths.data_dir()), paths.offline_root())
    for path in (*(os.path.join(d.home, p) for p in SENSITIVE), *own):
        path = os.path.normpath(path)
        if not _within(path, d.home):
            continue
        hidden = d.to_hide(path)
        if hidden is not None and hidden not in d.hide:
            d.hide.append(hidden)


def no_network(d: Draft) -> None:
    d.network = "none"


def open_network(d: Draft) -> None:
    """Every public host through the proxy, audited, the address guard on."""
    d.network = "open"


def protect_project_files(d: Draft) -> None:
    """The config, .envrc, .nixcell/ and .git read-only inside: code in the cell must not
    rewrite its own sandbox, nor what host tools run on their own. ``.git`` (a directory, or a
    worktree's "gitdir: PATH" file) is a mount point then, which cannot be renamed: a cell
    cannot move it aside and put a ``.git`` of its own there."""
    root = d.project.root
    if not d.project_mounted:
        return
    names = [os.path.relpath(d.project.found.path, root), *PROTECTED]
    names += [os.path.relpath(p, root) for p in d.project.config.policy if _within(p, root)]
    for name in dict.fromkeys(names):
        path = os.path.join(root, name)
        kind = d.kind(path)
        if kind == "link":
            raise UsageError(
                f"{path} is a symbolic link (to {os.readlink(path)}): it must be read-only in "
                "the cell and a link could lead anywhere; replace it with the real file"
            )
        if kind is not None:
            d.bind(path, path, False)


def state_binds(d: Draft) -> None:
    """``.nixcell/local/*`` as the cell's XDG dirs (``ensure_state`` made them); ``local/``
    itself stays read-only (under .nixcell), so a cell can write in them but never swap one
    for a symlink."""
    if not d.project_mounted:  # strict: nothing of the project in the cell
        return
    local = os.path.join(d.project.root, ".nixcell", "local")
    for name in STATE_NAMES:
        place, var = STATE_PLACES[name]
        source = os.path.join(local, name)
        if d.kind(source) != "dir":
            raise UsageError(f"{source} is not a directory (a cell may have swapped it)")
        target = os.path.join(CELL_HOME, place)
        if d.home_mode == "readonly" and d.kind(os.path.join(d.home, place)) != "dir":
            target = os.path.join(BESIDE_HOME, name)
        d.bind(source, target, True)
        d.env[var] = target
        # what this bind covers of the home needs no hiding, and a hide there would make its
        # mount point inside the project's state dir (on the host)
        d.hide = [h for h in d.hide if not _within(d.cell_path(h), target)]


LEVELS: dict[str, tuple[Callable[[Draft], None], ...]] = {
    "strict": (fresh_workspace, tmpfs_home, no_network),
    "standard": (project_rw, tmpfs_home, open_network),
    "relaxed": (project_rw, readonly_home, hide_sensitive, open_network),
}
# after the config's own binds, so that they cannot cover these
LAST = (state_binds, protect_project_files)


def default_network(level: str) -> str:
    """The network mode a level's pieces choose (none unless a piece opens it)."""
    d = Draft.__new__(Draft)
    d.network = "none"
    for piece in LEVELS[level]:
        if piece in (no_network, open_network):
            piece(d)
    return d.network

"""Shell completion: the script `nixcell completion SHELL` prints, and the values flags complete.

click's own shell completion does the protocol (the printed script calls ``nixcell`` back with
``_NIXCELL_COMPLETE`` set, once per TAB); this module adds the script and the values of
``-p/--package``, ``--nixpkgs`` and ``--hardening-profile``. Package names must come back fast,
every keystroke: the offline set's names are one small JSON read, and a host nixpkgs's top-level
attribute names are evaluated once per nixpkgs revision (in the background, a detached
``nix-instantiate``) and read from a cache file after that. Nothing here is on the path of
``nixcell run``: click imports it only to complete.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import click

# What a shell may be handed: click's bash script expands candidates unquoted (globbing), so
# only plain attribute names pass; anything else in a cache file is dropped.
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_+.-]*\Z")
_RETRY_SECONDS = 600  # after a failed evaluation of the host nixpkgs
# Top-level attribute names of the host's nixpkgs, without building or instantiating anything.
_ATTRS_EXPR = 'builtins.concatStringsSep "\\n" (builtins.attrNames (import <nixpkgs> {}))'


def script(root: click.Command, shell: str) -> str:
    """click's completion script for ``shell``, calling back ``nixcell``."""
    from click.shell_completion import get_completion_class

    comp_cls = get_completion_class(shell)
    if comp_cls is None:  # pragma: no cover - the command's Choice allows only click's shells
        raise click.BadParameter(f"no completion for {shell!r}")
    text = comp_cls(root, {}, "nixcell", "_NIXCELL_COMPLETE").source()
    return text if text.endswith("\n") else text + "\n"


def complete_package(
    ctx: click.Context, _param: click.Parameter, incomplete: str
) -> list[click.shell_completion.CompletionItem]:
    """``-p`` candidates: the offline set's names, plus the host nixpkgs's unless the command
    line says ``--nixpkgs offline`` (a channel or commit pin is offered the host's names too:
    close enough, and nothing is fetched to complete)."""
    from click.shell_completion import CompletionItem

    names = set(offline_names())
    if ctx.params.get("nixpkgs") != "offline":
        names.update(nixpkgs_names())
    return [CompletionItem(n) for n in sorted(names) if n.startswith(incomplete)]


def complete_profile(
    _ctx: click.Context, _param: click.Parameter, incomplete: str
) -> list[click.shell_completion.CompletionItem]:
    from click.shell_completion import CompletionItem

    from nixcell.sandbox.seccomp import PROFILES

    return [CompletionItem(n, help=h) for n, h in PROFILES.items() if n.startswith(incomplete)]


def complete_pin(
    _ctx: click.Context, _param: click.Parameter, incomplete: str
) -> list[click.shell_completion.CompletionItem]:
    """The named pins (a commit or a path is the user's to type)."""
    from click.shell_completion import CompletionItem

    named = ("nixos-24.11", "nixos-unstable", "offline")
    return [CompletionItem(n) for n in named if n.startswith(incomplete)]


def offline_names() -> list[str]:
    from nixcell import paths
    from nixcell.nix.offline.setfile import read_state

    state = read_state(paths.offline_dir())
    return [] if state is None else [n for n in state.attrs() if _NAME.match(n)]


def host_nixpkgs() -> str | None:
    from nixcell.nix.pins import host_has_nixpkgs

    return host_has_nixpkgs()


def nixpkgs_names() -> list[str]:
    """The host nixpkgs's top-level names from the cache; when there is none yet, start making
    it in the background and answer without them this time."""
    where = host_nixpkgs()
    if where is None:
        return []
    cache = _cache_file(where)
    if cache is None:
        return []
    try:
        text = cache.read_text()
    except FileNotFoundError:
        if _may_try(cache.with_suffix(".tried")):
            _refresh_in_background(os.path.abspath(where), cache)  # (it runs from /)
        return []
    except OSError:
        return []
    return [n for n in text.split("\n") if _NAME.match(n)]


def _cache_file(where: str) -> Path | None:
    """One file per nixpkgs revision: its real path (a channel link moves to a new store path
    on update) and the mtime of that directory key the name."""
    from nixcell import paths
    from nixcell.errors import StateError
    from nixcell.fsio import private_dir

    real = os.path.realpath(where)
    try:
        stamp = os.stat(real).st_mtime_ns
        directory = private_dir(paths.cache_dir() / "completion")
    except (OSError, StateError):
        return None
    key = hashlib.sha256(f"{real}\0{stamp}".encode()).hexdigest()[:32]
    return Path(directory) / f"nixpkgs-{key}.txt"


def _may_try(marker: Path) -> bool:
    """One evaluation at a time, and a failed one is not retried for ten minutes."""
    import time

    try:
        if time.time() - marker.stat().st_mtime < _RETRY_SECONDS:
            return False
        marker.unlink()
    except FileNotFoundError:
        pass
    except OSError:
        return False
    try:
        os.close(os.open(marker, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600))
    except OSError:
        return False
    return True


def _refresh_in_background(where: str, cache: Path) -> None:
    """Detached: the shell must not wait for an evaluation of nixpkgs (seconds). ``-P`` and
    ``cwd="/"``: ``python -m`` puts the current directory first on ``sys.path``, and TAB is
    pressed anywhere (a cloned repository's ``json.py`` would run as the user)."""
    argv = [sys.executable, "-P", "-m", "nixcell.cli.completion", where, str(cache)]
    with contextlib.suppress(OSError):
        subprocess.Popen(
            argv,
            cwd="/",
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )


def write_cache(where: str, cache: Path) -> int:
    """Evaluate the names of nixpkgs at ``where`` and write them to ``cache`` atomically."""
    from nixcell.fsio import write_atomic

    argv = ["nix-instantiate", "--eval", "--strict", "--json", "-E", _ATTRS_EXPR]
    env = {**os.environ, "NIX_PATH": f"nixpkgs={where}"}
    try:
        out = subprocess.run(argv, capture_output=True, timeout=120, env=env, check=True)
        names = json.loads(out.stdout).split("\n")
    except (OSError, subprocess.SubprocessError, ValueError, AttributeError):
        return 1
    write_atomic(cache, "\n".join(n for n in names if _NAME.match(n)) + "\n")
    return 0


if __name__ == "__main__":  # the background refresh
    sys.exit(write_cache(sys.argv[1], Path(sys.argv[2])))

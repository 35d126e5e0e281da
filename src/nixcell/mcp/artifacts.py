"""nix-sandbox-mcp's mkSandbox artifacts as environments of the ``run`` tool.

An artifact is a store path holding ``metadata.json`` (``name``, ``interpreter_type``,
``timeout_seconds``, ``memory_mb``) and ``bin/run`` (``bin/session-run`` when it offers
sessions). nix-sandbox-mcp executes ``bin/run``, a jail.nix wrapper that starts its own
bubblewrap; nixcell does not: the cell is the sandbox. It runs the artifact's interpreter from
the artifact's closure (mkSandbox's ``sandbox-env-NAME`` when there is one), in its own cell,
with the artifact's limits enforced by the engine — memory_mb included, which nix-sandbox-mcp
declared and never applied.

Everything is checked at start and any problem stops the server with one line naming the
artifact: not a store path, an invalid or oversized ``metadata.json``, a ``bin/run`` that
resolves outside the closure, a name already taken.
"""

from __future__ import annotations

import json
import logging
import os
import stat
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nixcell.mcp.config import _NAME, PROGRAMS, ConfigError, EnvConfig
from nixcell.nix.closure import STORE_PATH

log = logging.getLogger(__name__)

METADATA_LIMIT = 64 << 10  # mkSandbox writes ~100 bytes
DEFAULT_TIMEOUT = 30  # nix-sandbox-mcp's defaults for absent keys
DEFAULT_MEMORY_MB = 512
_KEYS = ("name", "interpreter_type", "timeout_seconds", "memory_mb")
_INTERPRETERS = ("python", "bash", "node")


class ArtifactError(ConfigError):
    """An artifact cannot be used; the message names it."""


Fail = Callable[[str], ArtifactError]  # the message, prefixed with where and which artifact


@dataclass(frozen=True)
class Artifact:
    """A checked artifact: where it was found, its store path, its metadata, its closure."""

    entry: str  # as found: NIX_SANDBOX_DIR/NAME, or the flake ref it was built from
    store_path: str
    name: str
    interpreter: str
    timeout: float
    memory_mb: int | None
    sessions: bool
    packages: tuple[str, ...]  # store paths whose bin/ the cell's PATH holds

    def env_config(self) -> EnvConfig:
        return EnvConfig(
            name=self.name,
            interpreter=self.interpreter,
            packages=self.packages,
            timeout=self.timeout,
            memory_mb=self.memory_mb,
            sessions=self.sessions,
            origin=f"artifact {self.entry}",
        )


def read_artifact(entry: str, where: str) -> Artifact:
    """Check one artifact (``entry`` may be a link to its store path); ``where`` says which
    variable named it, for the messages."""
    label = f"{where}: artifact {entry}"

    def fail(message: str) -> ArtifactError:
        return ArtifactError(f"{label}: {message}")

    real = os.path.realpath(entry)
    if not STORE_PATH.fullmatch(real):
        shown = real if real == entry else f"{entry} -> {real}"
        raise fail(
            f"not a Nix store path ({shown}); nixcell runs an artifact's closure, so build it "
            "into the store, e.g. `nix build FLAKE#NAME -o DIR/NAME`"
        )
    closure = _closure(real, fail)
    meta = _metadata(Path(real, "metadata.json"), fail)
    for script in ("run", "session-run"):
        _check_in_closure(real, f"bin/{script}", closure, fail, required=script == "run")
    name, interpreter = meta["name"], meta["interpreter_type"]
    program = PROGRAMS[interpreter]
    packages = _packages(real, name, program, closure, fail)
    return Artifact(
        entry=entry,
        store_path=real,
        name=name,
        interpreter=interpreter,
        timeout=meta["timeout_seconds"],
        memory_mb=meta["memory_mb"] or None,
        sessions=os.path.lexists(os.path.join(real, "bin", "session-run")),
        packages=packages,
    )


def _closure(path: str, fail: Fail) -> frozenset[str]:
    from nixcell.nix.resolve import nix_tool
    from nixcell.nix.storeroot import refuse_root

    refuse_root("MCP artifacts")  # (they are read from the machine's store)
    try:
        proc = subprocess.run(
            [nix_tool("nix-store"), "-qR", path],
            capture_output=True,
            text=True,
            errors="replace",
            timeout=120,
        )
    except subprocess.TimeoutExpired:
        raise fail("nix-store -qR did not answer in 120 s") from None
    if proc.returncode != 0:
        raise fail("not a valid path of the Nix store (nix-store -qR failed)")
    return frozenset(proc.stdout.split())


def _metadata(path: Path, fail: Fail) -> dict[str, Any]:
    """metadata.json, opened without following a link, bounded, strictly typed."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
    except FileNotFoundError:
        raise fail("no metadata.json") from None
    except OSError as exc:
        reason = "is a symbolic link" if exc.errno == 40 else (exc.strerror or str(exc))
        raise fail(f"metadata.json {reason}") from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise fail("metadata.json is not a regular file")
        if info.st_size > METADATA_LIMIT:
            raise fail(f"metadata.json is {info.st_size} bytes (at most {METADATA_LIMIT})")
        data = os.read(fd, METADATA_LIMIT + 1)
    finally:
        os.close(fd)
    try:
        doc = json.loads(data.decode("utf-8"), object_pairs_hook=_no_duplicates)
    except (UnicodeDecodeError, ValueError) as exc:
        raise fail(f"metadata.json is not valid JSON ({exc})") from None
    if not isinstance(doc, dict):
        raise fail("metadata.json must hold a JSON object")
    return _check_keys(doc, fail)


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise ValueError(f"duplicate key {key!r}")
        out[key] = value
    return out


def _check_keys(doc: dict[str, Any], fail: Fail) -> dict[str, Any]:
    for key in doc:
        if key not in _KEYS:
            raise fail(f"metadata.json: unknown key {key!r} (expected {', '.join(_KEYS)})")
    for key in ("name", "interpreter_type"):
        if key not in doc:
            raise fail(f"metadata.json: '{key}' is missing")
    name = doc["name"]
    if not isinstance(name, str) or not _NAME.match(name):
        raise fail(
            f"metadata.json: name {name!r} is not a valid environment name "
            "(up to 64 letters, digits, _ . -)"
        )
    kind = doc["interpreter_type"]
    if kind not in _INTERPRETERS:
        raise fail(f"metadata.json: interpreter_type {kind!r} must be python, bash or node")
    timeout = doc.get("timeout_seconds", DEFAULT_TIMEOUT)
    if (
        isinstance(timeout, bool)
        or not isinstance(timeout, int | float)
        or not (0 < timeout <= 86400)
    ):
        raise fail(f"metadata.json: timeout_seconds {timeout!r} must be seconds in (0, 86400]")
    memory = doc.get("memory_mb", DEFAULT_MEMORY_MB)
    if isinstance(memory, bool) or not isinstance(memory, int) or 0 < memory < 4 or memory < 0:
        raise fail(f"metadata.json: memory_mb {memory!r} must be a whole number ≥ 4 (0: no limit)")
    return {
        "name": name,
        "interpreter_type": kind,
        "timeout_seconds": float(timeout),
        "memory_mb": memory,
    }


def _check_in_closure(
    root: str, rel: str, closure: frozenset[str], fail: Fail, *, required: bool
) -> None:
    """``root/rel`` must resolve to a regular file inside the closure (a link elsewhere, say
    into /etc, is refused)."""
    path = os.path.join(root, rel)
    if not os.path.lexists(path):
        if required:
            raise fail(f"no {rel}")
        return
    real = os.path.realpath(path)
    top = "/".join(real.split("/", 4)[:4])
    if top not in closure:
        raise fail(f"{rel} resolves outside the artifact's closure ({real})")
    if not os.path.isfile(real):
        raise fail(f"{rel} is not a file ({real})")


def _packages(
    root: str, name: str, program: str, closure: frozenset[str], fail: Fail
) -> tuple[str, ...]:
    """The store paths on the cell's PATH: mkSandbox's ``sandbox-env-NAME`` (the environment
    its bin/run puts on PATH) when the closure has it; otherwise every path of the closure with
    a bin/, the one providing the interpreter first — and exactly one may provide it."""
    env = [p for p in closure if p.endswith(f"-sandbox-env-{name}")]
    if len(env) == 1:
        if not os.path.lexists(os.path.join(env[0], "bin", program)):
            raise fail(f"its environment {env[0]} has no bin/{program}")
        # the cell holds only the closure: an interpreter linked elsewhere would not be there
        _check_in_closure("", os.path.join(env[0], "bin", program), closure, fail, required=True)
        return (env[0],)
    with_bin = sorted(p for p in closure if p != root and os.path.isdir(os.path.join(p, "bin")))
    providers = [p for p in with_bin if os.path.lexists(os.path.join(p, "bin", program))]
    if not providers:
        raise fail(f"no {program} in its closure (interpreter_type needs it)")
    for provider in providers:
        _check_in_closure("", os.path.join(provider, "bin", program), closure, fail, required=True)
    if len({os.path.realpath(os.path.join(p, "bin", program)) for p in providers}) > 1:
        raise fail(
            f"several paths of its closure provide {program} ({', '.join(providers)}) and it "
            f"has no sandbox-env-{name} saying which one is meant"
        )
    first = providers[0]
    return (first, *[p for p in with_bin if p != first])


def scan_dir(directory: str, where: str = "NIX_SANDBOX_DIR") -> list[Artifact]:
    """Every artifact in ``directory``: hidden entries and plain files are skipped, a dangling
    link (an artifact gone from the store) is refused."""
    try:
        names = sorted(os.listdir(directory))
    except OSError as exc:
        raise ConfigError(f"{where}={directory}: {exc.strerror or exc}") from None
    found = []
    for name in names:
        entry = os.path.join(directory, name)
        if not name.startswith(".") and os.path.islink(entry) and not os.path.exists(entry):
            target = os.readlink(entry)
            raise ArtifactError(f"{where}: artifact {entry}: a link to nothing (-> {target})")
        if name.startswith(".") or not os.path.isdir(entry):
            log.debug("%s: skipping %s (not an artifact directory)", where, entry)
            continue
        found.append(read_artifact(entry, where))
    return found


def merge(envs: dict[str, EnvConfig], artifacts: list[Artifact]) -> dict[str, EnvConfig]:
    """The environments with the artifacts added; a name already taken is refused (a preset,
    a configured environment or another artifact: which one was meant would be a guess)."""
    out = dict(envs)
    for artifact in artifacts:
        taken = out.get(artifact.name)
        if taken is not None:
            what = "the preset" if taken.origin == "preset" else f"the one from {taken.origin}"
            raise ArtifactError(
                f"artifact {artifact.entry}: its name '{artifact.name}' is already {what} "
                f"'{artifact.name}'; give the artifact another name (mkSandbox's name)"
            )
        out[artifact.name] = artifact.env_config()
        log.info("environment '%s' from artifact %s", artifact.name, artifact.store_path)
    return out

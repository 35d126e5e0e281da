"""The one exception family of nixcell.

Every error a user can cause or meet carries a one-line message meant for them; the CLI prints
``nixcell: <message>`` and exits non-zero. ``detail`` holds the longer story (nix's log excerpt,
the command that failed) and is shown only with ``--verbose``.
"""

from __future__ import annotations


class NixcellError(Exception):
    """Base class: ``str(err)`` is the one-line user message."""

    exit_code: int = 1

    def __init__(self, message: str, *, detail: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.detail = detail

    def __str__(self) -> str:
        return self.message


class UsageError(NixcellError):
    """Malformed flags, values or config: the user's input is wrong."""

    exit_code = 2


class SpecError(UsageError):
    """A CellSpec field is invalid (bad size, duplicate mount, unknown profile)."""


class NixError(NixcellError):
    """Nix is missing or failed (evaluation, build, store query)."""


class NixMissingError(NixError):
    """No usable nix installation."""


class UnknownPackageError(NixError):
    """Requested packages do not exist in the package set; ``names`` lists every one."""

    names: tuple[str, ...] = ()
    where: str = "package set"  # the set's description: "offline package set", "nixpkgs at …"


class EvaluationError(NixError):
    """Nix evaluation failed for a reason other than a missing attribute."""


class SandboxError(NixcellError):
    """The sandbox could not be set up (bwrap missing, namespaces unavailable)."""


class LimitUnavailableError(SandboxError):
    """A requested limit or isolation cannot be enforced here: we refuse rather than run weaker."""


class CellFailedError(SandboxError):
    """bwrap itself failed before the command started."""


class CommandNotFoundError(NixcellError):
    """The command does not exist in the cell (exit 127, like a shell)."""

    exit_code = 127


class PolicyError(UsageError):
    """A network policy (file or flag) is malformed; the message names the file and line."""


class CredentialError(NixcellError):
    """A credential cannot be loaded. The message never contains the secret itself."""


class NetworkError(SandboxError):
    """The cell's network (namespace, proxy listener) could not be set up."""


class StateError(NixcellError):
    """nixcell's own state (cache/state dir, a file it writes for you) is unsafe to use.

    Raised when a directory is writable by others or owned by someone else, or when an output
    path is a symlink, hard link, FIFO or device: nixcell refuses instead of writing through it.
    """


class PlatformError(SandboxError):
    """This operating system has no backend that runs cells (macOS, today)."""

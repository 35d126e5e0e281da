"""What a client may name for a clone: repository URLs, refs, the start subdirectory. Pure.

Each of these reaches ``git`` (a URL, a ref) or a path join on the host (the subdirectory), so
each is checked against the whole class of trick, not against examples: remote-helper syntax
(``ext::sh -c ...``, ``fd::``), anything git would read as an option, scp-style ``host:path``,
passwords in the URL (they would land in logs and ``.git/config``), refspec syntax (``+a:b``,
``a..b``, ``@{...}``, ``^``, ``~``, globs), control characters anywhere.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import SplitResult, urlsplit

from nixcell.jobs.contract import JobError
from nixcell.net.hosts import BadHost, normalize_host

KNOWN_SCHEMES = ("https", "http", "file")  # git's own smart/dumb transports nixcell supports
MAX_URL = 2048
MAX_REF = 255
MAX_SUBPATH = 1024
COMMIT = re.compile(r"[0-9a-f]{40}")
_REF_CHARS = re.compile(r"[A-Za-z0-9._/-]+")
_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*")


@dataclass(frozen=True)
class RepoUrl:
    url: str  # as given (checked): what git is told
    scheme: str
    host: str  # normalised; "" for file://

    @property
    def shown(self) -> str:
        return self.url


def _printable(text: str) -> bool:
    return not any(ord(c) < 0x21 or ord(c) == 0x7F for c in text)


def printable(text: str) -> str:
    """``text`` with control and format characters (C0, DEL, C1, bidi overrides) escaped: one
    line, nothing a terminal or a log reader would act on (output of git, nix, a server)."""
    return "".join(c if c.isprintable() or c == " " else repr(c)[1:-1] for c in text)


def shown(text: str, limit: int = 80) -> str:
    """``text`` for a one-line message: escaped, cut."""
    out = repr(text[:limit])
    return out + ("..." if len(text) > limit else "")


def check_url(url: object, schemes: tuple[str, ...]) -> RepoUrl:
    """A URL git may fetch from, or a one-line JobError saying why not."""
    if not isinstance(url, str) or not url:
        raise JobError("workspace.repo must be a URL")
    if len(url) > MAX_URL:
        raise JobError(f"workspace.repo is longer than {MAX_URL} characters")
    if not _printable(url) or any(c.isspace() for c in url):
        raise JobError(f"workspace.repo {shown(url)}: spaces or control characters")
    if url.startswith("-"):
        raise JobError(f"workspace.repo {shown(url)}: looks like an option")
    if "::" in url.split("/", 1)[0] or re.match(r"[A-Za-z0-9+.-]+::", url):
        raise JobError(f"workspace.repo {shown(url)}: git remote-helper syntax is not allowed")
    scheme, sep, _ = url.partition("://")
    if not sep or not _SCHEME.fullmatch(scheme):
        raise JobError(
            f"workspace.repo {shown(url)}: needs a scheme (https://...); "
            "scp-style host:path is not allowed"
        )
    scheme = scheme.lower()
    allowed = tuple(s for s in schemes if s in KNOWN_SCHEMES)
    if scheme not in allowed:
        raise JobError(
            f"workspace.repo {shown(url)}: scheme {scheme} is not allowed by this server "
            f"(allowed: {', '.join(allowed) or 'none'})"
        )
    try:
        parts = urlsplit(url)
    except ValueError as exc:
        raise JobError(f"workspace.repo {shown(url)}: {exc}") from None
    if parts.query or parts.fragment or "#" in url or "?" in url:
        raise JobError(f"workspace.repo {shown(url)}: no query or fragment")
    if "\\" in url:
        raise JobError(f"workspace.repo {shown(url)}: backslashes are not allowed")
    if scheme == "file":
        return _file_url(url, parts)
    return RepoUrl(url, scheme, _network_host(url, parts))


def _file_url(url: str, parts: SplitResult) -> RepoUrl:
    if parts.netloc not in ("", "localhost"):
        raise JobError(f"workspace.repo {shown(url)}: file:// URLs name no host")
    path = parts.path
    if not path.startswith("/") or "%" in path:
        raise JobError(f"workspace.repo {shown(url)}: file:// needs an absolute, unescaped path")
    if any(seg in (".", "..") for seg in path.split("/")):
        raise JobError(f"workspace.repo {shown(url)}: '.' and '..' are not allowed in the path")
    return RepoUrl(url, "file", "")


def _network_host(url: str, parts: SplitResult) -> str:
    netloc = parts.netloc
    if "@" in netloc:
        userinfo, _, netloc = netloc.rpartition("@")
        if ":" in userinfo:
            raise JobError(
                f"workspace.repo: a password in the URL would be logged; name a server "
                f"credential with workspace.git_credential instead ({parts.scheme}://...)"
            )
        if "@" in userinfo or not re.fullmatch(r"[A-Za-z0-9._~-]+", userinfo):
            raise JobError(f"workspace.repo {shown(url)}: invalid user name in the URL")
    if not netloc or "%" in netloc:
        raise JobError(f"workspace.repo {shown(url)}: needs a plain host name")
    if not netloc.isascii():  # curl's IDNA mapping need not be ours: no second opinion
        raise JobError(f"workspace.repo {shown(url)}: write a non-ASCII host in punycode (xn--)")
    host, port = netloc, ""
    if netloc.startswith("["):
        end = netloc.find("]")
        host, port = netloc[: end + 1], netloc[end + 1 :]
        if end < 0 or (port and not port.startswith(":")):
            raise JobError(f"workspace.repo {shown(url)}: invalid IPv6 host")
        port = port[1:]
    elif ":" in netloc:
        host, _, port = netloc.rpartition(":")
    if port and (not port.isdigit() or not 0 < int(port) < 65536 or port.startswith("0")):
        raise JobError(f"workspace.repo {shown(url)}: invalid port {shown(port, 10)}")
    try:
        return normalize_host(host)
    except BadHost as exc:
        raise JobError(f"workspace.repo: {exc}") from None


def check_ref(ref: object) -> str | None:
    """A branch or tag name, a 40-hex commit, or None (the remote's HEAD)."""
    if ref is None:
        return None
    if not isinstance(ref, str) or not ref:
        raise JobError("workspace.ref must be a branch, a tag or a 40-hex commit")
    if len(ref) > MAX_REF:
        raise JobError(f"workspace.ref is longer than {MAX_REF} characters")
    if COMMIT.fullmatch(ref):
        return ref
    bad = (
        not _REF_CHARS.fullmatch(ref)
        or ref.startswith(("-", "/", "."))
        or ref.endswith(("/", ".", ".lock"))
        or ".." in ref
        or "//" in ref
        or "/." in ref
        or ref == "HEAD"
        or ref.startswith("refs/")
    )
    if bad:
        raise JobError(
            f"workspace.ref {shown(ref)}: not a plain branch or tag name, nor a 40-hex commit"
        )
    return ref


def check_subpath(path: object) -> tuple[str, ...]:
    """``workspace.path`` as its components: relative, no '.', '..' or empty parts."""
    if path is None:
        return ()
    if not isinstance(path, str) or not path:
        raise JobError("workspace.path must be a relative directory")
    if len(path) > MAX_SUBPATH:
        raise JobError(f"workspace.path is longer than {MAX_SUBPATH} characters")
    if not _printable(path.replace(" ", "x")) or "\\" in path:
        raise JobError(f"workspace.path {shown(path)}: control characters or backslashes")
    if path.startswith("/"):
        raise JobError(f"workspace.path {shown(path)}: must be relative to the workspace")
    parts = tuple(path.rstrip("/").split("/"))
    if any(p in ("", ".", "..") for p in parts):
        raise JobError(f"workspace.path {shown(path)}: '.', '..' and empty parts are not allowed")
    if any(len(p.encode()) > 255 for p in parts):
        raise JobError(f"workspace.path {shown(path)}: a part is longer than 255 bytes")
    return parts

"""Shallow clones for job workspaces: real ``git`` on the host, fenced in.

git runs with an environment made from nothing (no system or global config, no terminal
prompts, no proxy or ``GIT_*`` of the server), only the repository's own protocol allowed, no
hooks, no fsmonitor, no submodules, objects fsck-ed on arrival, no redirects (a redirect could
carry the credential to another host), a timeout, and a size cap (the tree is measured while git
runs; ``RLIMIT_FSIZE`` bounds single files).

A credential (``workspace.git_credential``) is a server ``[[credentials]]`` table whose
``hosts`` must match the repository's host. Its secret reaches git only through the
environment of the git process, read by a small ``GIT_ASKPASS`` script in a 0700 server
directory: never argv, never a file, never the URL, never the cell. git's stderr is scrubbed of
it before anything is logged or shown.

A clone is resolved to one commit (``ls-remote``, then the fetch itself), cached read-only under
``clones/<sha256(url, commit)>`` and published by an atomic rename, so a cache entry that exists
is complete. Jobs get a copy (``treewalk.copy_tree``), never the cache itself.
"""

from __future__ import annotations

import hashlib
import logging
import os
import resource
import signal
import subprocess
import tempfile
import time
from dataclasses import dataclass
from typing import Any

from nixcell.errors import CredentialError, PolicyError
from nixcell.fsio import private_dir, remove_tree, write_atomic
from nixcell.jobs.contract import JobError
from nixcell.jobs.gitrefs import COMMIT, RepoUrl, check_ref, check_url, printable
from nixcell.jobs.treewalk import DIR_FLAGS, tree_size
from nixcell.quiet import suppress

log = logging.getLogger(__name__)

TIMEOUT = 300.0
MAX_BYTES = 1 << 30
USERNAME = "x-access-token"  # what git sends as the Basic-auth user with a token
_ASKPASS = """#!/bin/sh
# nixcell: answers git's prompts from the git process's own environment (never a file or argv).
[ -n "${NIXCELL_GIT_PASSWORD-}" ] || exit 1
case "$1" in
Username*) printf '%s\\n' "$NIXCELL_GIT_USERNAME" ;;
*) printf '%s\\n' "$NIXCELL_GIT_PASSWORD" ;;
esac
"""


@dataclass(frozen=True)
class Clone:
    path: str  # the cache entry (read-only for everyone: jobs copy it)
    commit: str


class Cloner:
    """Clones into ``{state_dir}/clones``; config keys from ``ServerConfig`` (read leniently)."""

    def __init__(self, config: Any) -> None:
        self.state_dir = str(config.state_dir)
        self.schemes = tuple(getattr(config, "repo_schemes", ("https", "http")))
        self.timeout = float(getattr(config, "clone_timeout", TIMEOUT))
        self.max_bytes = int(getattr(config, "clone_limit", MAX_BYTES))
        self.cidrs = tuple(getattr(config, "repo_cidrs", ()) or ())
        self._credentials = tuple(getattr(config, "credentials", ()) or ())
        self._source = str(getattr(config, "source", None) or "server config")

    @property
    def clones_dir(self) -> str:
        return private_dir(os.path.join(self.state_dir, "clones"))

    def clone(
        self, repo: str, ref: str | None, credential: str | None, owner: str | None = None
    ) -> Clone:
        """The cached clone of ``repo`` at ``ref`` (made now when missing). ``owner`` (a
        caller key, ``uid:N``/``token:NAME``) is who reads a ``file://`` repository; None:
        the server itself."""
        url = check_url(repo, self.schemes)
        ref = check_ref(ref)
        reader: _Reader | None = None
        if url.scheme == "file":
            self._not_ours(url)
            reader = _reader_for(owner)
        secret = self._secret(credential, url) if credential else None
        pinned = None
        if url.scheme in ("http", "https"):  # resolved once, checked, pinned (repoaddr.py)
            from nixcell.jobs.repoaddr import pin

            pinned = pin(url.url, url.host, self.cidrs)
        git = _Git(self._askpass(), url, secret, self.timeout, self.max_bytes, reader, pinned)
        commit = ref if ref is not None and COMMIT.fullmatch(ref) else git.resolve(ref)
        if commit is not None:
            cached = self._entry(url, commit, credential, reader)
            if os.path.isdir(cached) and not os.path.islink(cached):
                return Clone(cached, commit)
        tmp = tempfile.mkdtemp(prefix=".tmp-", dir=self.clones_dir)
        try:
            fetched = git.fetch(tmp, ref)
            final = self._entry(url, fetched, credential, reader)
            os.chmod(tmp, 0o755)
            try:
                os.rename(tmp, final)
            except OSError:  # another job published the same commit meanwhile
                if not os.path.isdir(final):
                    raise
                remove_tree(tmp)
            return Clone(final, fetched)
        except BaseException:
            with suppress(Exception):
                remove_tree(tmp)
            raise

    def _not_ours(self, url: RepoUrl) -> None:
        """``file://`` never names the server's state: other jobs' workspaces (their cells
        wrote ``.git/config`` there, and root's upload-pack would read it), uploads, clones."""
        from urllib.parse import urlsplit

        real = os.path.realpath(urlsplit(url.url).path)
        state = os.path.realpath(self.state_dir)
        if real == state or real.startswith(state + "/") or state.startswith(real + "/"):
            raise JobError("workspace.repo: a file:// repository may not be in the server's state")

    def _entry(
        self, url: RepoUrl, commit: str, credential: str | None, reader: _Reader | None = None
    ) -> str:
        """The cache entry: by URL, commit *and* credential (and, for ``file://``, the uid
        that read it) — a private repository is never handed to a request that could not
        fetch it itself (a known commit id would otherwise skip git, and so the access check
        — the remote's, or the file system's — entirely)."""
        who = f"\0uid:{reader.uid}" if reader is not None else ""
        text = f"{url.url}\0{commit}\0{credential or ''}{who}"
        key = hashlib.sha256(text.encode()).hexdigest()
        return os.path.join(self.clones_dir, key)

    def check(self, repo: str, ref: str | None, credential: str | None) -> None:
        """At submit: what ``clone`` would refuse before any network or git (no DNS: the
        address is checked when the job is prepared)."""
        url = check_url(repo, self.schemes)
        check_ref(ref)
        if url.scheme == "file":
            self._not_ours(url)
        if credential:
            self._credential(credential, url)

    def _secret(self, name: str, url: RepoUrl) -> str:
        from nixcell.net.credsource import load_secret

        spec = self._credential(name, url)
        try:
            return load_secret(spec)
        except CredentialError as exc:  # its message never holds the secret
            raise JobError(f"cannot load credential {name!r}: {exc.message}", status=500) from None

    def _credential(self, name: str, url: RepoUrl):  # -> CredentialSpec
        from nixcell.net.credsource import parse_credentials

        try:
            specs = parse_credentials(list(self._credentials), self._source)
        except PolicyError as exc:
            raise JobError(f"the server's credentials are invalid: {exc}", status=500) from None
        spec = next((s for s in specs if s.name == name), None)
        if spec is None:
            raise JobError(f"workspace.git_credential: no credential {name!r} on this server")
        if url.scheme == "file":
            raise JobError(f"credential {name!r} is for network repositories, not file://")
        if not spec.matches(url.host):
            raise JobError(f"credential {name!r} is not for host {url.host}")
        if url.scheme == "http" and not spec.allow_plaintext:
            raise JobError(
                f"credential {name!r} would cross cleartext http:// to {url.host}; "
                "use https:// (or allow_plaintext on the credential)"
            )
        return spec

    def _askpass(self) -> str:
        directory = private_dir(os.path.join(self.state_dir, "git"))
        path = os.path.join(directory, "askpass")
        try:
            with open(path, encoding="utf-8") as f:
                if f.read() == _ASKPASS:
                    return path
        except OSError:
            pass
        write_atomic(path, _ASKPASS, mode=0o700)
        return path

    def gc(self, older_than: float) -> int:
        """Remove cache entries (and stale temp dirs) not used since ``older_than``."""
        removed = 0
        clones = self.clones_dir
        for name in os.listdir(clones):
            path = os.path.join(clones, name)
            with suppress(OSError):
                if os.lstat(path).st_mtime < older_than:
                    remove_tree(path)
                    removed += not name.startswith(".tmp-")
        return removed


@dataclass(frozen=True)
class _Reader:
    """The host identity a ``file://`` repository is read as (its ``upload-pack``)."""

    uid: int
    gid: int
    groups: tuple[int, ...]

    def upload_pack(self) -> str:
        """The remote side's command, as the caller: any repository it can read is fine to
        read (``safe.directory``: git's check is for a user reading another's repository
        unawares; here the caller chose it, and reads with its own rights only)."""
        import shutil

        setpriv = shutil.which("setpriv")
        if setpriv is None:
            raise JobError("file:// clones need setpriv (util-linux) on the server", status=500)
        groups = ",".join(map(str, self.groups))
        drop = f"--groups={groups}" if groups else "--clear-groups"
        return (
            f"{setpriv} --reuid={self.uid} --regid={self.gid} {drop} --no-new-privs "
            "git -c safe.directory=* upload-pack"
        )


def _reader_for(owner: str | None) -> _Reader | None:
    """Who reads a ``file://`` repository: the caller's own uid (a root server reads any
    file, so it must not read for a caller what the caller could not), None: the server."""
    import pwd

    if owner is None:
        return None
    kind, _, ident = owner.partition(":")
    if kind != "uid" or not ident.isdigit():
        raise JobError(
            "workspace.repo: file:// is read as the caller's own uid; this caller has none "
            "(connect through the unix socket)"
        )
    uid = int(ident)
    if uid == os.geteuid():
        return None
    if os.geteuid() != 0:
        raise JobError(
            f"workspace.repo: file:// is read as the caller's own uid; this server cannot act "
            f"as uid {uid}"
        )
    try:
        entry = pwd.getpwuid(uid)
        gid = entry.pw_gid
        groups = tuple(sorted(set(os.getgrouplist(entry.pw_name, gid))))
    except KeyError:
        gid, groups = 65534, ()
    return _Reader(uid, gid, groups)


class _Git:
    """One repository's git invocations: the fenced environment, the watched process."""

    def __init__(
        self,
        askpass: str,
        url: RepoUrl,
        secret: str | None,
        timeout: float,
        max_bytes: int,
        reader: _Reader | None = None,
        pinned: str | None = None,
    ) -> None:
        self.url = url
        self.remote_opts = [f"--upload-pack={reader.upload_pack()}"] if reader else []
        self.secret = secret
        self.deadline = time.monotonic() + timeout
        self.timeout = timeout
        self.max_bytes = max_bytes
        self.home = os.path.dirname(askpass)
        self.env = {
            "PATH": os.environ.get("PATH") or "/usr/bin:/bin",
            "HOME": self.home,
            "XDG_CONFIG_HOME": self.home,
            "LC_ALL": "C",
            "GIT_CONFIG_NOSYSTEM": "1",
            "GIT_CONFIG_GLOBAL": "/dev/null",
            "GIT_TERMINAL_PROMPT": "0",
            "GIT_ASKPASS": askpass,
            "GIT_ALLOW_PROTOCOL": url.scheme,
            "GIT_PROTOCOL_FROM_USER": "0",
            "GIT_NO_REPLACE_OBJECTS": "1",
            "GIT_LFS_SKIP_SMUDGE": "1",
        }
        self.auth_env = dict(self.env)  # only the commands that talk to the remote get it
        if secret is not None:
            self.auth_env["NIXCELL_GIT_USERNAME"] = USERNAME
            self.auth_env["NIXCELL_GIT_PASSWORD"] = secret
        self.config = [
            "protocol.allow=never",
            f"protocol.{url.scheme}.allow=always",
            "core.hooksPath=/dev/null",
            "core.fsmonitor=false",
            "core.symlinks=true",
            "submodule.recurse=false",
            "fetch.recurseSubmodules=false",
            "fetch.fsckObjects=true",
            "transfer.fsckObjects=true",
            "http.followRedirects=false",
            "credential.helper=",
            "gc.auto=0",
            "maintenance.auto=false",
            "init.defaultBranch=main",
            "advice.detachedHead=false",
        ]
        if pinned is not None:  # curl connects to the checked address, whatever DNS says next
            self.config.append(f"http.curloptResolve={pinned}")

    def resolve(self, ref: str | None) -> str | None:
        """The commit ``ref`` names on the remote now (None: let the fetch find out)."""
        out = self._run(
            ["ls-remote", *self.remote_opts, "--", self.url.url, ref or "HEAD"], "ls-remote", None
        )
        found = dict(
            (name, sha) for sha, _, name in (ln.partition("\t") for ln in out.splitlines())
        )
        if ref is None:
            return _commit_or_none(found.get("HEAD"))
        for name in (f"refs/heads/{ref}", f"refs/tags/{ref}^{{}}", f"refs/tags/{ref}"):
            if name in found:
                return _commit_or_none(found[name])
        raise JobError(f"{self.url.url} has no branch or tag {ref!r}")

    def fetch(self, tmp: str, ref: str | None) -> str:
        """Fetch ``ref`` (a name, a commit, or None: HEAD) at depth 1 and check it out into
        ``tmp``; the commit checked out (a branch may have moved since ``resolve``)."""
        self._run(["init", "-q", "--", tmp], "init", tmp)
        want = ref or "HEAD"
        fetch = ["fetch", "-q", *self.remote_opts, "--depth", "1", "--no-tags"]
        self._run(
            ["-C", tmp, *fetch, "--", self.url.url, want],
            "fetch",
            tmp,
        )
        got = self._run(["-C", tmp, "rev-parse", "--verify", "-q", "FETCH_HEAD^{commit}"], "", tmp)
        got = got.strip()
        if not COMMIT.fullmatch(got):
            raise JobError(f"git fetch from {self.url.url} gave no commit")
        self._run(["-C", tmp, "checkout", "-q", "--detach", got], "checkout", tmp)
        self._run(["-C", tmp, "remote", "add", "origin", self.url.url], "", tmp)
        if _size(tmp) > self.max_bytes:
            raise JobError(f"the clone of {self.url.url} is over {self.max_bytes} bytes")
        return got

    def _run(self, args: list[str], what: str, watch: str | None) -> str:
        argv = ["git"]
        for item in self.config:
            argv += ["-c", item]
        argv += args
        argv = self._fenced(argv, watch)
        with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
            try:
                proc = subprocess.Popen(
                    argv,
                    stdin=subprocess.DEVNULL,
                    stdout=out,
                    stderr=err,
                    env=self.auth_env if what in ("ls-remote", "fetch") else self.env,
                    cwd=self.home,
                    start_new_session=True,
                )
            except OSError as exc:
                raise JobError(f"cannot run git: {exc.strerror}", status=500) from None
            with suppress(OSError):
                resource.prlimit(proc.pid, resource.RLIMIT_FSIZE, (self.max_bytes,) * 2)
            failure = self._watch(proc, watch)
            err.seek(0)
            stderr = self.scrub(err.read(1 << 16).decode(errors="replace"))
            if stderr.strip():
                log.info("git %s %s: %s", what or args[0], self.url.url, _one_line(stderr))
            if failure:
                raise JobError(failure)
            if proc.returncode == -signal.SIGXFSZ or "died of signal 25" in stderr:
                raise JobError(f"the clone of {self.url.url} is over {self.max_bytes} bytes")
            if proc.returncode != 0:
                why = _reason(stderr)
                raise JobError(f"git {what or args[-1]} of {self.url.url} failed: {why}")
            out.seek(0)
            return out.read(1 << 20).decode(errors="replace")

    def _fenced(self, argv: list[str], writable: str | None) -> list[str]:
        """``argv`` in bwrap: its own pid namespace and ``--die-with-parent`` (a daemon killed
        with SIGKILL takes git and its helpers, which hold the credential in their environment,
        with it: the timeout watcher died), and a mount namespace where the server's state dir
        is an empty tmpfs (only the askpass dir and the clone being made are bound back). A
        ``file://`` remote is a host path the client chose: whatever it leads through — a
        ``.git`` file or link, ``commondir``, ``alternates``, a link swapped in after
        ``_not_ours`` looked, ``/proc/PID/root`` — git cannot open the state (and has no
        network)."""
        from nixcell.sandbox.bwrapio import bwrap_path

        state = os.path.realpath(os.path.dirname(self.home))
        home = os.path.realpath(self.home)
        fence = [bwrap_path(), "--dev-bind", "/", "/", "--unshare-pid", "--unshare-ipc"]
        if self.url.scheme == "file":
            fence.append("--unshare-net")
        fence += ["--die-with-parent", "--proc", "/proc", "--tmpfs", state]
        fence += ["--ro-bind", home, home]
        if writable is not None:
            real = os.path.realpath(writable)
            fence += ["--bind", real, real]
        # RLIMIT_FSIZE set inside, before git starts: prlimit on bwrap's pid comes too late
        # for what bwrap has already forked
        blocks = str(max(1, self.max_bytes // 512))
        limit = ["/bin/sh", "-c", 'ulimit -f "$0" && exec "$@"', blocks]
        return [*fence, "--chdir", home, "--", *limit, *argv]

    def _watch(self, proc: subprocess.Popen[bytes], watch: str | None) -> str | None:
        """Wait for git; kill its whole group on timeout or when the tree grows too big."""
        interval = 0.05
        while True:
            left = self.deadline - time.monotonic()
            try:
                proc.wait(timeout=max(0.0, min(interval, left)))
                return None
            except subprocess.TimeoutExpired:
                pass
            failure = None
            if time.monotonic() >= self.deadline:
                failure = f"git took over {self.timeout:g} s for {self.url.url}"
            elif watch is not None and _size(watch) > self.max_bytes:
                failure = f"the clone of {self.url.url} is over {self.max_bytes} bytes"
            if failure:
                with suppress(OSError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
                return failure
            interval = min(interval * 2, 1.0)

    def scrub(self, text: str) -> str:
        """git's output without the secret and without the server's own paths."""
        state = os.path.dirname(self.home)
        text = text.replace(state, "<state>")
        if not self.secret:
            return text
        from urllib.parse import quote

        for form in {self.secret, quote(self.secret, safe=""), quote(self.secret)}:
            text = text.replace(form, "<secret>")
        return text


def _fd(path: str) -> int:
    return os.open(path, DIR_FLAGS)


def _size(path: str) -> int:
    try:
        fd = _fd(path)
    except OSError:
        return 0
    try:
        return tree_size(fd)
    finally:
        os.close(fd)


def _commit_or_none(sha: str | None) -> str | None:
    return sha if sha and COMMIT.fullmatch(sha) else None


def _one_line(text: str) -> str:
    """git's (or a hostile server's) output for one log line: no forged lines, no escapes."""
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    return printable(" | ".join(lines))[:2000]


def _reason(stderr: str) -> str:
    if "askpass" in stderr or "could not read Username" in stderr:
        return "the repository wants credentials (name a server one: workspace.git_credential)"
    if "Authentication failed" in stderr:
        return "authentication failed (the credential was refused)"
    lines = [ln.strip() for ln in stderr.splitlines() if ln.strip()]
    first = next((ln for ln in lines if ln.startswith(("fatal:", "error:"))), None)
    text = (first or (lines[-1] if lines else "no message")).split(":", 1)[-1].strip()
    return _one_line(text)[:200]

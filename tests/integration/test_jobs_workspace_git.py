"""Git workspaces with real git: a local bare repo over file:// (branch, tag, commit, path,
cache), and a loopback smart-HTTP server wanting a token that must never reach the cell, the
logs, the clone's files or an error message."""

from __future__ import annotations

import asyncio
import base64
import logging
import os
import shutil
import subprocess
from pathlib import Path
from types import SimpleNamespace

import pytest
from tests.integration.githttp import GitServer

from nixcell.jobs.contract import JobError
from nixcell.jobs.model import Job, JobRequest
from nixcell.jobs.workspace import Prepared, Workspaces

pytestmark = pytest.mark.skipif(shutil.which("git") is None, reason="needs git")
TOKEN = "ghp_" + "Q7sXk2Lm9Zt4Rw8Yp3Vn6Bc1Hd5Jf0Ga2Ke"
MARKER = "MARKER-IN-CLONE-6b1f"
GIT_ENV = {
    "GIT_CONFIG_NOSYSTEM": "1",
    "GIT_CONFIG_GLOBAL": "/dev/null",
    "GIT_AUTHOR_NAME": "t",
    "GIT_AUTHOR_EMAIL": "t@example.invalid",
    "GIT_COMMITTER_NAME": "t",
    "GIT_COMMITTER_EMAIL": "t@example.invalid",
    "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
    "HOME": "/nonexistent",
}


def git(*args: str, cwd: Path) -> str:
    return subprocess.run(
        ["git", *args], cwd=cwd, env=GIT_ENV, check=True, capture_output=True, text=True
    ).stdout.strip()


@pytest.fixture(scope="module")
def origin(tmp_path_factory) -> SimpleNamespace:
    root = tmp_path_factory.mktemp("origin")
    work = root / "work"
    work.mkdir()
    git("init", "-q", "-b", "main", cwd=work)
    (work / "README").write_text("first\n")
    git("add", "-A", cwd=work)
    git("commit", "-qm", "one", cwd=work)
    first = git("rev-parse", "HEAD", cwd=work)
    git("tag", "-a", "v1", "-m", "v1", cwd=work)
    (work / "sub" / "inner").mkdir(parents=True)
    (work / "sub" / "inner" / "file.txt").write_text(f"{MARKER}\n")
    os.symlink("/etc/shadow", work / "evil")
    os.symlink("sub", work / "selflink")
    (work / "README").write_text("second\n")
    git("add", "-A", cwd=work)
    git("commit", "-qm", "two", cwd=work)
    second = git("rev-parse", "HEAD", cwd=work)
    git("checkout", "-q", "-b", "feature", cwd=work)
    (work / "feature.txt").write_text("feature\n")
    git("add", "-A", cwd=work)
    git("commit", "-qm", "three", cwd=work)
    git("checkout", "-q", "main", cwd=work)
    git("clone", "-q", "--bare", str(work), str(root / "repo.git"), cwd=root)
    return SimpleNamespace(root=root, url=f"file://{root}/repo.git", first=first, second=second)


def job() -> Job:
    return Job(id=1, owner="uid:0", owner_name="root", request={}, state="preparing", created=0)


def prepare(ws: Workspaces, tmp_path: Path, **workspace) -> Prepared:
    job_dir = tmp_path / "jobs" / "1"
    job_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    request = JobRequest(command=["true"], workspace=workspace)
    return asyncio.run(ws.prepare(job(), request, str(job_dir)))


def workspaces(tmp_path: Path, **config) -> Workspaces:
    from nixcell.jobs.config import ServerConfig  # the server's real config object

    config.setdefault("repo_schemes", ("https", "http", "file"))  # file:// is off by default
    config.setdefault("repo_cidrs", ("127.0.0.0/8",))  # the loopback git server (repoaddr.py)
    return Workspaces(ServerConfig(state_dir=str(tmp_path / "state"), **config))


@pytest.mark.parametrize(
    ("ref", "readme", "feature"),
    [
        ("main", "second", False),
        ("v1", "first", False),
        ("feature", "second", True),
        (None, "second", False),
    ],
)
def test_file_clone_of_branch_tag_and_head(origin, tmp_path, ref, readme, feature):
    ws = workspaces(tmp_path)
    got = prepare(ws, tmp_path, repo=origin.url, ref=ref)
    tree = Path(got.path)
    assert (tree / "README").read_text() == f"{readme}\n"
    assert (tree / "feature.txt").exists() == feature
    assert got.cwd is None and got.packages == ()
    if readme == "second":  # the planted link is a link in the copy, never followed
        assert os.readlink(tree / "evil") == "/etc/shadow"
    assert (tree / ".git" / "shallow").exists()
    assert "hooksPath" not in (tree / ".git" / "config").read_text()


def test_commit_path_and_cache(origin, tmp_path):
    ws = workspaces(tmp_path)
    got = prepare(ws, tmp_path, repo=origin.url, ref=origin.first)
    assert (Path(got.path) / "README").read_text() == "first\n"
    got = prepare(ws, tmp_path, repo=origin.url, ref=origin.second, path="sub/inner")
    assert got.cwd == "/workspace/sub/inner"
    assert (Path(got.path) / "sub/inner/file.txt").read_text() == f"{MARKER}\n"
    clones = sorted(os.listdir(tmp_path / "state" / "clones"))
    prepare(ws, tmp_path, repo=origin.url, ref="main")  # main is `second`: the same entry
    prepare(ws, tmp_path, repo=origin.url, ref=origin.second)
    assert sorted(os.listdir(tmp_path / "state" / "clones")) == clones and len(clones) == 2
    assert ws.gc(older_than=3600)["clones"] == 0
    assert ws.gc(older_than=0)["clones"] == 2


@pytest.mark.parametrize(
    ("fields", "why"),
    [
        ({"ref": "nope"}, "has no branch or tag 'nope'"),
        ({"ref": "0" * 40}, "git fetch of"),
        ({"ref": "main", "path": "selflink/inner"}, "through a symlink"),
        ({"ref": "main", "path": "README"}, "not a directory of the workspace"),
        ({"ref": "main", "path": "missing"}, "not a directory of the workspace"),
        ({"ref": "main", "path": "../.."}, "'..'"),
        ({"ref": "--upload-pack=touch /tmp/x"}, "not a plain branch"),
        ({"ref": "main", "git_credential": "nope"}, "no credential 'nope'"),
    ],
)
def test_bad_refs_and_paths_against_real_git(origin, tmp_path, fields, why):
    ws = workspaces(tmp_path)
    with pytest.raises(JobError) as info:
        prepare(ws, tmp_path, repo=origin.url, **fields)
    assert why in str(info.value)
    assert "\n" not in str(info.value)
    left = os.listdir(tmp_path / "state" / "clones") if (tmp_path / "state/clones").exists() else []
    assert not [n for n in left if n.startswith(".tmp-")]


def test_schemes_are_the_servers(origin, tmp_path):
    ws = workspaces(tmp_path, repo_schemes=("https",))
    with pytest.raises(JobError, match="scheme file is not allowed by this server"):
        prepare(ws, tmp_path, repo=origin.url)


def test_shape_errors(origin, tmp_path):
    ws = workspaces(tmp_path)
    for fields, why in (
        ({"repo": origin.url, "upload": "u-" + "0" * 32}, "not both"),
        ({"ref": "main"}, "workspace.ref needs workspace.repo"),
        ({"path": "x"}, "workspace.path needs"),
        ({"flake_shell": True}, "workspace.flake_shell needs"),
    ):
        with pytest.raises(JobError, match=why):
            prepare(ws, tmp_path, **fields)


# -- over HTTP, with a token -------------------------------------------------------------------


@pytest.fixture
def server(origin):
    srv = GitServer(str(origin.root), TOKEN)
    yield srv
    srv.stop()


def credential(**extra) -> dict:
    table = {
        "name": "gittok",
        "source": "env:NIXCELL_TEST_GIT_TOKEN",
        "hosts": ["127.0.0.1"],
        "allow_plaintext": True,
    }
    return {**table, **extra}


def forms(secret: str) -> list[bytes]:
    basic = base64.b64encode(f"x-access-token:{secret}".encode())
    return [secret.encode(), basic, secret[4:].encode()]


def assert_nowhere(secret: str, *blobs: bytes | str) -> None:
    for blob in blobs:
        data = blob.encode() if isinstance(blob, str) else blob
        for form in forms(secret):
            assert form not in data


def tree_bytes(root: Path) -> bytes:
    out = []
    for path in root.rglob("*"):
        if path.is_file() and not path.is_symlink():
            out.append(path.read_bytes())
    return b"\n".join(out)


def test_http_clone_with_a_token_that_never_leaks(origin, tmp_path, server, monkeypatch, caplog):
    monkeypatch.setenv("NIXCELL_TEST_GIT_TOKEN", TOKEN)
    caplog.set_level(logging.DEBUG)
    ws = workspaces(tmp_path, credentials=(credential(),))
    url = server.url("repo.git")
    with pytest.raises(JobError) as info:  # without the credential: the server says 401
        prepare(ws, tmp_path, repo=url, ref="main")
    assert "wants credentials" in str(info.value)
    assert "\n" not in str(info.value) and str(tmp_path) not in str(info.value)
    launched: list[tuple[list[str], dict[str, str]]] = []
    real_popen = subprocess.Popen

    def recording_popen(argv, *args, **kwargs):  # the real git runs; we only look at it
        argv = list(argv)  # git, or git in its bwrap fence (the test's http-backend: never)
        if argv[:1] == ["git"] or (argv[0].endswith("/bwrap") and "git" in argv):
            launched.append((list(argv), dict(kwargs.get("env") or {})))
        return real_popen(argv, *args, **kwargs)

    monkeypatch.setattr("nixcell.jobs.gitclone.subprocess.Popen", recording_popen)
    got = prepare(ws, tmp_path, repo=url, ref="main", git_credential="gittok", path="sub")
    assert len(launched) >= 3  # ls-remote, init, fetch, ...
    for argv, env in launched:  # the secret only in the variable askpass reads, never argv
        assert_nowhere(TOKEN, " ".join(argv))
        holders = [k for k, v in env.items() if TOKEN in v]
        talks = "ls-remote" in argv or "fetch" in argv  # only those talk to the remote
        assert holders == (["NIXCELL_GIT_PASSWORD"] if talks else [])
        assert not any(k.startswith(("HTTP_PROXY", "http_proxy", "GIT_DIR")) for k in env)
    assert (Path(got.path) / "sub/inner/file.txt").read_text() == f"{MARKER}\n"
    assert any(ok for _, _, ok in server.requests)
    assert_nowhere(TOKEN, caplog.text, tree_bytes(tmp_path))  # logs, clone, .git/config, state
    assert_nowhere(TOKEN, "\n".join(str(r) for r in server.requests))
    for name in ("NIXCELL_GIT_PASSWORD",):
        assert name not in os.environ

    # the cell: its environment and every file it can see (but the store) are dumped to the
    # host, which looks for the token there; the clone's marker proves the dump saw /workspace
    from nixcell import CellSpec, run

    if os.getuid() != 0 or shutil.which("bwrap") is None:
        pytest.skip("the in-cell check needs root and bwrap (CI runs it)")
    script = (
        "env; tr '\\0' '\\n' < /proc/self/environ; ls -laR /workspace; "
        "tar -cf - --exclude=./proc --exclude=./sys --exclude=./dev --exclude=./nix -C / . "
        "2>/dev/null"
    )
    spec = CellSpec(
        command=["bash", "-c", script],
        packages=["bash", "coreutils", "gnutar"],
        workdir=got.path,
        cwd=got.cwd,
    )
    result = run(spec, capture_output=True)
    assert result.exit_code in (0, 2), result.stderr
    assert MARKER.encode() in result.stdout
    assert b"shallow" in result.stdout  # .git was in there too
    assert_nowhere(TOKEN, result.stdout, result.stderr or b"")


@pytest.mark.parametrize(
    ("table", "why"),
    [
        ({"hosts": ["git.example.org"]}, "is not for host 127.0.0.1"),
        ({"allow_plaintext": False}, "cleartext http://"),
        ({"source": "env:NIXCELL_TEST_UNSET_VAR"}, "is not set"),
    ],
)
def test_credential_refusals(origin, tmp_path, server, monkeypatch, caplog, table, why):
    monkeypatch.setenv("NIXCELL_TEST_GIT_TOKEN", TOKEN)
    monkeypatch.delenv("NIXCELL_TEST_UNSET_VAR", raising=False)
    caplog.set_level(logging.DEBUG)
    ws = workspaces(tmp_path, credentials=(credential(**table),))
    with pytest.raises(JobError) as info:
        prepare(ws, tmp_path, repo=server.url("repo.git"), git_credential="gittok")
    assert why in str(info.value)
    assert_nowhere(TOKEN, str(info.value), caplog.text)
    assert not any(ok for _, _, ok in server.requests)  # refused before any request


def test_wrong_token_fails_in_one_line_without_showing_it(
    origin, tmp_path, server, monkeypatch, caplog
):
    wrong = "ghp_" + "W" * 36
    monkeypatch.setenv("NIXCELL_TEST_GIT_TOKEN", wrong)
    caplog.set_level(logging.DEBUG)
    ws = workspaces(tmp_path, credentials=(credential(),))
    with pytest.raises(JobError) as info:
        prepare(ws, tmp_path, repo=server.url("repo.git"), git_credential="gittok")
    assert "authentication failed" in str(info.value)
    assert "\n" not in str(info.value) and str(tmp_path) not in str(info.value)
    assert_nowhere(wrong, str(info.value), caplog.text, tree_bytes(tmp_path))


def test_a_cloned_workspace_compiles_and_runs_in_its_start_dir(origin, tmp_path, offline_set):
    """Prepared -> compile_request -> a real cell: it starts in ``workspace.path``, reads the
    clone, writes its workspace; the planted link points at the cell's own (absent) file."""
    from nixcell import run
    from nixcell.jobs.compile import compile_request

    ws = workspaces(tmp_path)
    fields = {"repo": origin.url, "ref": "main", "path": "sub"}
    got = prepare(ws, tmp_path, **fields)
    request = JobRequest(
        packages=["bash", "coreutils"],
        script="pwd; cat inner/file.txt; echo made > ../made.txt; cat ../evil || echo no-shadow",
        workspace=fields,
    )
    job_dir = tmp_path / "jobs" / "1"
    compiled = compile_request(
        request,
        ws.config,  # type: ignore[arg-type]
        job_dir=str(job_dir),
        workspace=got.path,
        cwd=got.cwd,
        credential_policy=None,
        audit=None,
    )
    for name, data in compiled.files.items():
        (job_dir / name).write_bytes(data)
        (job_dir / name).chmod(0o644)
    result = run(compiled.spec, capture_output=True)
    assert result.exit_code == 0, result.stderr
    lines = result.stdout.decode().splitlines()
    assert lines[:2] == ["/workspace/sub", MARKER]
    assert lines[-1] == "no-shadow"
    assert (Path(got.path) / "made.txt").read_text() == "made\n"


def test_a_clone_over_the_size_cap_is_refused_and_leaves_nothing(tmp_path):
    work = tmp_path / "big"
    work.mkdir()
    git("init", "-q", "-b", "main", cwd=work)
    (work / "blob").write_bytes(os.urandom(200_000))  # incompressible
    git("add", "-A", cwd=work)
    git("commit", "-qm", "big", cwd=work)
    ws = Workspaces(
        SimpleNamespace(
            state_dir=str(tmp_path / "state"), clone_limit=50_000, repo_schemes=("file",)
        )
    )
    with pytest.raises(JobError) as info:
        prepare(ws, tmp_path, repo=f"file://{work}")
    assert str(info.value) == f"the clone of file://{work} is over 50000 bytes"
    assert os.listdir(tmp_path / "state" / "clones") == []


def test_a_redirect_never_carries_the_token_elsewhere(origin, tmp_path, server, monkeypatch):
    """The repo's host answers 301 to another host name: git must not follow (its askpass
    would answer that host's prompt with the secret)."""
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
    from threading import Thread

    class Redirect(BaseHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

        def do_GET(self) -> None:
            self.send_response(301)
            self.send_header("Location", f"http://localhost:{server.port}{self.path}")
            self.send_header("Content-Length", "0")
            self.end_headers()

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Redirect)
    Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        monkeypatch.setenv("NIXCELL_TEST_GIT_TOKEN", TOKEN)
        ws = workspaces(tmp_path, credentials=(credential(),))
        url = f"http://127.0.0.1:{httpd.server_address[1]}/repo.git"
        with pytest.raises(JobError) as info:
            prepare(ws, tmp_path, repo=url, git_credential="gittok")
        assert "\n" not in str(info.value)
        assert server.requests == []  # nothing reached the redirect's target
    finally:
        httpd.shutdown()
        httpd.server_close()


def test_a_server_that_never_answers_times_out(tmp_path):
    import socket

    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)  # accepts (in the backlog) and never says a word
    try:
        port = listener.getsockname()[1]
        ws = Workspaces(
            SimpleNamespace(
                state_dir=str(tmp_path / "state"),
                clone_timeout=1,
                repo_schemes=("http",),
                repo_cidrs=("127.0.0.1/32",),
            )
        )
        with pytest.raises(JobError) as info:
            prepare(ws, tmp_path, repo=f"http://127.0.0.1:{port}/repo.git")
        assert str(info.value) == f"git took over 1 s for http://127.0.0.1:{port}/repo.git"
    finally:
        listener.close()


def test_file_urls_never_name_the_servers_state(origin, tmp_path):
    """Another job's workspace is a repo its cell wrote (``.git/config`` included): never
    cloned, however it is spelled (directly, through a symlink, the state dir's parent)."""
    from nixcell.jobs.config import ServerConfig

    ws = Workspaces(  # jobs/ inside, as the service has it
        ServerConfig(state_dir=str(tmp_path), repo_schemes=("file",))
    )
    first = prepare(ws, tmp_path, repo=origin.url, ref="main")  # jobs/1/workspace has a .git
    os.symlink(tmp_path, tmp_path.parent / f"{tmp_path.name}-alias")
    alias = f"{tmp_path.parent}/{tmp_path.name}-alias/jobs/1/workspace"
    for path in (first.path, alias, str(tmp_path.parent)):
        with pytest.raises(JobError, match="may not be in the server's state"):
            prepare(ws, tmp_path, repo=f"file://{path}")
    os.unlink(tmp_path.parent / f"{tmp_path.name}-alias")


def test_a_private_clone_in_the_cache_is_not_given_without_its_credential(
    origin, tmp_path, server, monkeypatch
):
    """Fetched with the token, cached; the same URL and commit id without the credential must
    still ask the server (and be refused), not be served from the cache."""
    monkeypatch.setenv("NIXCELL_TEST_GIT_TOKEN", TOKEN)
    ws = workspaces(tmp_path, credentials=(credential(),))
    url = server.url("repo.git")
    prepare(ws, tmp_path, repo=url, ref=origin.second, git_credential="gittok")
    with pytest.raises(JobError, match="wants credentials"):
        prepare(ws, tmp_path, repo=url, ref=origin.second)
    again = prepare(ws, tmp_path, repo=url, ref=origin.second, git_credential="gittok")
    assert (Path(again.path) / "README").read_text() == "second\n"


def _gitfile(att: Path, victim: Path, sha: str) -> None:  # .git file naming the victim's git dir
    att.mkdir()
    (att / ".git").write_text(f"gitdir: {victim}/.git\n")


def _git_symlink(att: Path, victim: Path, sha: str) -> None:  # .git a link into the state
    att.mkdir()
    os.symlink(f"{victim}/.git", att / ".git")


def _objects_symlink(att: Path, victim: Path, sha: str) -> None:  # a bare repo, objects linked
    git("init", "-q", "--bare", str(att), cwd=att.parent)
    shutil.rmtree(att / "objects")
    os.symlink(f"{victim}/.git/objects", att / "objects")
    (att / "refs" / "heads" / "main").write_text(f"{sha}\n")


def _alternates(att: Path, victim: Path, sha: str) -> None:  # objects borrowed from the state
    git("init", "-q", "--bare", str(att), cwd=att.parent)
    (att / "objects" / "info" / "alternates").write_text(f"{victim}/.git/objects\n")
    (att / "refs" / "heads" / "main").write_text(f"{sha}\n")


def _commondir(att: Path, victim: Path, sha: str) -> None:  # a "worktree" whose common dir is it
    att.mkdir()
    gitdir = att.parent / f"{att.name}-gd"
    gitdir.mkdir()
    (gitdir / "commondir").write_text(f"{victim}/.git\n")
    (gitdir / "HEAD").write_text(f"{sha}\n")
    (att / ".git").write_text(f"gitdir: {gitdir}\n")


@pytest.mark.parametrize("victim_kind", ["workspace", "clone"])
@pytest.mark.parametrize(
    "plant", [_gitfile, _git_symlink, _objects_symlink, _alternates, _commondir]
)
def test_file_repos_outside_the_state_cannot_reach_into_it(origin, tmp_path, victim_kind, plant):
    """A file:// path that is not in the state dir, but whose git dir, objects or common dir
    is (a ``.git`` file or link, linked ``objects``, ``alternates``, ``commondir``): another
    job's workspace or a cached clone (maybe a private one) must never come out of it."""
    from nixcell.jobs.config import ServerConfig

    state = tmp_path / "state"
    ws = Workspaces(ServerConfig(state_dir=str(state), repo_schemes=("file",)))
    first = prepare(ws, state, repo=origin.url, ref="main")  # state/jobs/1/workspace: a repo
    victim = Path(first.path) if victim_kind == "workspace" else _cached_clone(state)
    assert (victim / "sub" / "inner" / "file.txt").read_text() == f"{MARKER}\n"
    att = tmp_path / "attacker"
    plant(att, victim, origin.second)
    with pytest.raises(JobError):  # the attacker's job dir is another one (jobs/1 stays)
        got = prepare(ws, tmp_path / "other", repo=f"file://{att}")
        assert MARKER not in tree_bytes(Path(got.path)).decode(errors="replace")


def _cached_clone(state: Path) -> Path:
    (entry,) = [p for p in (state / "clones").iterdir() if not p.name.startswith(".")]
    return entry


def test_file_repos_in_the_state_stay_hidden_even_past_the_path_check(
    origin, tmp_path, monkeypatch
):
    """The path check looks at a path the client controls before git opens it (a symlink can
    be swapped in between): git itself must not see the state dir, so with the check
    skipped, a path straight into it still gives nothing."""
    from nixcell.jobs.config import ServerConfig
    from nixcell.jobs.gitclone import Cloner

    state = tmp_path / "state"
    ws = Workspaces(ServerConfig(state_dir=str(state), repo_schemes=("file",)))
    first = prepare(ws, state, repo=origin.url, ref="main")
    monkeypatch.setattr(Cloner, "_not_ours", lambda self, url: None)
    for path in (first.path, str(_cached_clone(state))):
        with pytest.raises(JobError):
            got = prepare(ws, tmp_path / "other", repo=f"file://{path}")
            assert MARKER not in tree_bytes(Path(got.path)).decode(errors="replace")


def _pids_naming(text: str) -> list[int]:
    found = []
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                cmdline = Path(f"/proc/{name}/cmdline").read_bytes()
            except OSError:
                continue
            if text.encode() in cmdline and b"import" not in cmdline:
                found.append(int(name))
    return found


def _hanging_http(tmp_path: Path) -> tuple[str, object]:
    import socket

    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)  # accepts (in the backlog) and never says a word
    return f"http://127.0.0.1:{listener.getsockname()[1]}/hang.git", listener


def _hanging_file(tmp_path: Path) -> tuple[str, object]:
    repo = tmp_path / "hang.git"
    git("init", "-q", "--bare", str(repo), cwd=tmp_path)
    (repo / "HEAD").unlink()
    os.mkfifo(repo / "HEAD")  # git blocks opening it, forever
    return f"file://{repo}", None


@pytest.mark.parametrize("remote", [_hanging_http, _hanging_file])
def test_a_killed_daemon_leaves_no_git_behind(tmp_path, remote):
    """``kill -9`` of the daemon while git waits on a remote that never answers: its
    timeout watcher died with it, so git (and its helpers, which hold the credential in their
    environment) must die too, not hang on for ever."""
    import signal
    import sys
    import time

    url, keep = remote(tmp_path)
    script = (
        "import sys; from pathlib import Path\n"
        "from tests.integration.test_jobs_workspace_git import prepare\n"
        "from nixcell.jobs.config import ServerConfig\n"
        "from nixcell.jobs.workspace import Workspaces\n"
        f"ws = Workspaces(ServerConfig(state_dir={str(tmp_path / 'state')!r},\n"
        "    repo_schemes=('http', 'file'), repo_cidrs=('127.0.0.1/32',)))\n"
        f"prepare(ws, Path({str(tmp_path)!r}), repo={url!r})\n"
    )
    root = Path(__file__).resolve().parents[2]
    daemon = subprocess.Popen([sys.executable, "-c", script], cwd=root)
    left: list[int] = []
    try:
        deadline = time.monotonic() + 20
        while not _pids_naming(url) and time.monotonic() < deadline:
            assert daemon.poll() is None, "the clone ended instead of hanging"
            time.sleep(0.1)
        assert _pids_naming(url), "git never started"
        time.sleep(0.5)
        daemon.send_signal(signal.SIGKILL)
        daemon.wait()
        deadline = time.monotonic() + 5
        while (left := _pids_naming(url)) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not left, f"git outlived the daemon: {left}"
    finally:
        for pid in _pids_naming(url):  # only what this test started (its unique URL)
            with suppress_oserror():
                os.kill(pid, signal.SIGKILL)
        if keep is not None:
            keep.close()


def suppress_oserror():
    import contextlib

    return contextlib.suppress(OSError)


def test_git_itself_runs_under_the_file_size_limit(tmp_path, monkeypatch):
    """The tree watcher and the check after the fetch switched off: RLIMIT_FSIZE alone must
    stop a pack over the cap — set where git starts, not on a parent that already forked."""
    work = tmp_path / "big"
    work.mkdir()
    git("init", "-q", "-b", "main", cwd=work)
    (work / "blob").write_bytes(os.urandom(400_000))  # incompressible: the pack is as big
    git("add", "-A", cwd=work)
    git("commit", "-qm", "big", cwd=work)
    monkeypatch.setattr("nixcell.jobs.gitclone._size", lambda path: 0)
    monkeypatch.setattr("nixcell.jobs.gitclone.resource.prlimit", lambda *a: None)
    ws = Workspaces(
        SimpleNamespace(
            state_dir=str(tmp_path / "state"), clone_limit=100_000, repo_schemes=("file",)
        )
    )
    with pytest.raises(JobError, match=r"over 100000 bytes|failed"):
        prepare(ws, tmp_path, repo=f"file://{work}")
    assert os.listdir(tmp_path / "state" / "clones") == []


def _prepare_as(ws: Workspaces, base: Path, owner: str, **workspace) -> Prepared:
    job_dir = base / "jobs" / "1"
    if job_dir.exists():
        shutil.rmtree(job_dir)
    job_dir.mkdir(parents=True, mode=0o700)
    who = Job(id=1, owner=owner, owner_name=owner, request={}, state="preparing", created=0)
    request = JobRequest(command=["true"], workspace=workspace)
    return asyncio.run(ws.prepare(who, request, str(job_dir)))


@pytest.fixture
def private_repos(origin):
    """Copies of the origin repository: root's and uid 1000's, each 0700 and its owner's, and
    uid 1002's, 0755 (a shared one: everyone may read it)."""
    if os.geteuid() != 0:
        pytest.skip("needs root (repositories of other uids)")
    import tempfile

    top = Path(tempfile.mkdtemp(prefix="nixcell-private-", dir="/tmp"))
    try:
        os.chmod(top, 0o755)
        urls = {}
        for uid in (0, 1000, 1002):
            repo = top / f"repo-{uid}.git"
            shutil.copytree(origin.root / "repo.git", repo, symlinks=True)
            for path in [repo, *repo.rglob("*")]:
                os.lchown(path, uid, uid)
                os.chmod(path, os.lstat(path).st_mode | 0o055)  # readable, if reached
            os.chmod(repo, 0o755 if uid == 1002 else 0o700)
            urls[uid] = f"file://{repo}"
        yield urls
    finally:
        shutil.rmtree(top)


@pytest.mark.parametrize("ref", ["main", "commit", None])
@pytest.mark.parametrize(
    ("uid", "readers"),
    [(0, ("uid:0",)), (1000, ("uid:1000",)), (1002, ("uid:1000", "uid:1001"))],
)
def test_file_urls_read_only_what_the_caller_may_read(
    origin, tmp_path, private_repos, ref, uid, readers
):
    """A root server lists ``file``: a client gets a repository only if its own uid may read
    it (root's or another user's 0700 repository is refused; a token caller has no host
    identity), and the cache must not hand one caller's clone to another."""
    from nixcell.jobs.config import ServerConfig

    ws = Workspaces(ServerConfig(state_dir=str(tmp_path / "state"), repo_schemes=("file",)))
    want = origin.second if ref == "commit" else ref
    fields = {"repo": private_repos[uid], **({"ref": want} if want else {})}
    for reader in readers:  # the owner first: the clone is in the cache after it
        got = _prepare_as(ws, tmp_path, reader, **fields)
        assert (Path(got.path) / "README").read_text() == "second\n"
    for other in ("uid:1000", "uid:1001", "token:ci"):
        if other in readers:
            continue
        with pytest.raises(JobError) as info:  # not theirs to read, cached or not
            _prepare_as(ws, tmp_path, other, **fields)
        assert "\n" not in str(info.value)

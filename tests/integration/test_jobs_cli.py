"""The job client (`nixcell submit/jobs/show/logs/cancel/artifacts`) and `nixcell serve` itself,
against a real daemon: exit codes of `submit --follow`, where each stream goes, escapes on a
terminal, SIGTERM (nothing left), SIGHUP (reload; a bad config keeps the old one), a bad
config at start, and the client's start-up imports."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
from tests.conftest import NIXCELL
from tests.integration.jobsd import jobsd  # noqa: F401 - the fixture

pytestmark = pytest.mark.integration
RUN = ("-p", "bash", "-p", "coreutils", "--")


@pytest.mark.parametrize(
    ("flags", "script", "code", "stderr"),
    [
        ((), "echo out; echo err >&2", 0, "err"),
        ((), "exit 3", 3, None),
        (("--timeout", "1s"), "sleep 600", 124, "timed out"),
        (("-p", "no-such-package-x"), "true", 1, "job error: unknown package 'no-such-package-x'"),
    ],
)
def test_submit_follow_exits_with_the_jobs_code(jobsd, flags, script, code, stderr):  # noqa: F811
    d = jobsd()
    out = d.cli("submit", "--follow", *flags, *RUN, "bash", "-c", script)
    assert out.returncode == code, out.stderr
    if stderr:
        assert stderr in out.stderr.decode()


def test_streams_listing_and_detach(jobsd):  # noqa: F811
    d = jobsd()
    script = 'printf "o1\\no2\\n"; echo e1 >&2; printf "\\033[31mred\\n"'
    out = d.cli("submit", "--detach", "--name", "streams", *RUN, "bash", "-c", script)
    assert out.returncode == 0 and out.stdout.decode().strip().isdigit(), out.stderr
    job = out.stdout.decode().strip()
    d.wait_state(int(job), {"succeeded", "failed", "error"})
    out = d.cli("logs", job)
    assert out.stdout.decode().splitlines() == ["o1", "o2", "\x1b[31mred"]  # not a terminal
    err = out.stderr.decode().splitlines()
    assert "e1" in err and any(x.startswith("[nixcell] ") for x in err)
    out = d.cli("logs", job, "--tail", "1", "--stream", "stdout")
    assert out.stdout.decode().splitlines() == ["\x1b[31mred"] and not out.stderr
    out = d.cli("logs", job, "-f", "--tail", "1", "--stream", "stdout")
    assert out.returncode == 0 and out.stdout.decode().splitlines() == ["\x1b[31mred"]
    out = d.cli("logs", job, "--stream", "stderr")
    assert out.stderr.decode().splitlines() == ["e1"] and not out.stdout
    listed = json.loads(d.cli("jobs", "--json").stdout)
    assert {"id": int(job), "state": "succeeded"}.items() <= listed[0].items()
    table = d.cli("jobs", "--status", "succeeded").stdout.decode().splitlines()
    assert table[0].split() == ["ID", "STATE", "OWNER", "DURATION", "NAME/COMMAND"]
    assert table[1].split()[:2] == [job, "succeeded"] and table[1].endswith("streams")
    assert json.loads(d.cli("jobs", "--status", "failed", "--json").stdout) == []
    shown = json.loads(d.cli("show", job, "--json").stdout)
    assert shown["job"]["name"] == "streams" and shown["events"][-1]["state"] == "succeeded"
    bad = d.cli("jobs", "--status", "sleeping")
    assert bad.returncode == 2 and bad.stderr.decode().count("\n") == 1, bad.stderr
    assert d.cli("show", "0").returncode == 2
    assert d.cli("show", "77777").stderr.decode() == "nixcell: no job 77777\n"


def test_escapes_are_neutralised_on_a_terminal(jobsd):  # noqa: F811
    pexpect = pytest.importorskip("pexpect")
    d = jobsd()
    out = d.cli("submit", "--detach", *RUN, "bash", "-c", 'printf "a\\033]0;pwned\\007b\\n"')
    job = out.stdout.decode().strip()
    d.wait_state(int(job), {"succeeded"})
    child = pexpect.spawn(NIXCELL, ["logs", "--server", d.server, job, "--stream", "stdout"])
    child.expect(pexpect.EOF)
    assert b"a\\x1b]0;pwned\\x07b" in child.before and b"\x1b]0" not in child.before
    child = pexpect.spawn(NIXCELL, ["artifacts", "--server", d.server, job])  # tar to a tty
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 2 and b"-o FILE" in child.before


def test_cancel_ends_a_follower_with_130(jobsd):  # noqa: F811
    d = jobsd()
    follower = subprocess.Popen(
        [
            NIXCELL,
            "submit",
            "--server",
            d.server,
            "--follow",
            *RUN,
            "bash",
            "-c",
            "echo up; sleep 600",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert follower.stdout is not None
    assert follower.stdout.readline() == b"up\n"  # the job runs and is followed
    job = json.loads(d.cli("jobs", "--json", "--status", "running").stdout)[0]["id"]
    out = d.cli("cancel", str(job))
    assert out.returncode == 0 and out.stdout == f"job {job} cancelled\n".encode()
    assert follower.wait(120) == 130
    again = d.cli("cancel", str(job))
    assert again.returncode == 1 and b"finished" in again.stderr


def _cells_with(marker: str) -> list[int]:
    found = []
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            try:
                with open(f"/proc/{pid}/cmdline", "rb") as f:
                    if marker.encode() in f.read():
                        found.append(int(pid))
            except OSError:
                pass
    return found


def test_sigterm_leaves_nothing_and_a_restart_sees_the_job(jobsd):  # noqa: F811
    d = jobsd()
    out = d.cli("submit", "--detach", *RUN, "bash", "-c", "sleep 6543")
    job = int(out.stdout)
    d.wait_state(job, {"running"})
    assert _cells_with("sleep 6543")
    assert d.stop(signal.SIGTERM) == 0, d.log()
    assert not os.path.lexists(d.socket)
    assert _cells_with("sleep 6543") == []
    assert "Traceback" not in d.log() and "stopping" in d.log()
    d.start()
    assert d.call("GET", f"/api/v1/jobs/{job}")["job"]["state"] == "cancelled"


def test_sighup_reloads_and_keeps_the_old_config_when_the_new_one_is_bad(jobsd):  # noqa: F811
    d = jobsd(tcp=True)
    host = {"Host": f"127.0.0.1:{d.port}"}
    old_token = d.token
    d.token = "fresh-" + old_token  # write_config puts the new admin token in the file
    d.write_config("[server]\nconcurrency = 3\n")
    assert d.request("GET", "/api/v1/whoami", None, host, tcp=True, token=d.token)[0] == 401
    d.send_signal(signal.SIGHUP)
    deadline = time.monotonic() + 60
    while d.request("GET", "/api/v1/whoami", None, host, tcp=True, token=d.token)[0] != 200:
        assert time.monotonic() < deadline, d.log()
        time.sleep(0.05)
    assert d.request("GET", "/api/v1/whoami", None, host, tcp=True, token=old_token)[0] == 401
    d.config_path.write_text("[server]\nconcurrency = 'many'\n")
    d.send_signal(signal.SIGHUP)
    while "config not reloaded" not in d.log():
        assert time.monotonic() < deadline, d.log()
        time.sleep(0.05)
    line = next(x for x in d.log().splitlines() if "config not reloaded" in x)
    assert "concurrency" in line and "Traceback" not in d.log()
    assert d.request("GET", "/api/v1/whoami", None, host, tcp=True, token=d.token)[0] == 200


@pytest.mark.parametrize(
    ("config", "args", "needle"),
    [
        ("[server]\nnonsense = 1\n", (), "nonsense"),
        ("[server\n", (), "server.toml"),
        ("", ("--listen", "somewhere"), "somewhere"),
        ("", ("--listen", "unix:relative.sock"), "relative.sock"),
        ('[server]\nsocket_group = "no-such-group-x"\n', (), "no-such-group-x"),
    ],
)
def test_serve_bad_config_is_one_line_exit_2(jobsd, config, args, needle):  # noqa: F811
    d = jobsd(start=False)
    d.config_path.write_text(config)
    out = subprocess.run([*d.argv(), *args], capture_output=True, timeout=120)
    assert out.returncode == 2, out
    err = out.stderr.decode()
    assert err.count("\n") == 1 and err.startswith("nixcell: ") and needle in err, err


def test_serve_new_token_prints_a_token_and_its_hash():
    out = subprocess.run(
        [NIXCELL, "serve", "--new-token", "--token-name", "ci"], capture_output=True
    )
    assert out.returncode == 0, out.stderr
    token, *rest = out.stdout.decode().splitlines()
    import hashlib

    assert f'hash = "sha256:{hashlib.sha256(token.encode()).hexdigest()}"' in rest
    assert 'name = "ci"' in rest and token not in "\n".join(rest)


def test_the_client_imports_no_server_stack(tmp_path):
    code = (
        "import sys\nfrom nixcell.cli.entry import main\n"
        "try:\n    main(['jobs', '--server', 'unix:" + str(tmp_path / "none.sock") + "'])\n"
        "except SystemExit as e:\n    pass\n"
        "bad = [m for m in ('pydantic', 'starlette', 'uvicorn', 'nixcell.jobs.model')"
        " if m in sys.modules]\nprint(bad)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, timeout=60)
    assert out.stdout.decode().strip().splitlines()[-1] == "[]", out
    assert b"cannot reach the daemon" in out.stderr


def test_upload_then_artifacts(jobsd, tmp_path):  # noqa: F811
    import tarfile

    d = jobsd()
    src = tmp_path / "src"
    (src / "sub").mkdir(parents=True)
    (src / "in.txt").write_text("from the client\n")
    os.symlink("/etc/shadow", src / "sub" / "link")  # sent as a link (never read): refused
    out = d.cli("submit", "--upload", str(src), *RUN, "true")
    assert out.returncode == 2 and b"sub/link" in out.stderr and out.stderr.count(b"\n") == 1
    (src / "sub" / "link").unlink()
    os.symlink("../in.txt", src / "sub" / "link")
    script = "cat in.txt; readlink sub/link; echo made > out.txt"
    out = d.cli("submit", "--upload", str(src), "--follow", *RUN, "bash", "-c", script)
    assert out.returncode == 0, out.stderr
    assert out.stdout.decode().splitlines() == ["from the client", "../in.txt"]
    job = json.loads(d.cli("jobs", "--json", "--limit", "1").stdout)[0]["id"]
    target = tmp_path / "out.tar"
    got = d.cli("artifacts", str(job), "-o", str(target))
    assert got.returncode == 0, got.stderr
    with tarfile.open(target) as tar:
        names = {m.name.removeprefix("./"): m for m in tar.getmembers()}
        made = [n for n in names if n.endswith("out.txt")]
        assert made and tar.extractfile(names[made[0]]).read() == b"made\n"  # type: ignore[union-attr]
    assert not (tmp_path / "out.tar.part").exists()
    piped = d.cli("artifacts", str(job))  # stdout is a pipe here: the tar goes there
    assert piped.returncode == 0 and piped.stdout[257:262] == b"ustar"
    missing = d.cli("artifacts", "424242", "-o", str(tmp_path / "none.tar"))
    assert missing.returncode == 1 and not (tmp_path / "none.tar").exists()
    assert not (tmp_path / "none.tar.part").exists()

"""A compiled job request really runs: real cells (``nixcell.runner.run``), the script bound
read-only from the job dir, the workspace read-write, limits enforced, and the network through
the server's own policy and credential (a loopback plain-HTTP upstream pinned and granted by
that policy — the client could not have granted loopback itself). Only 127.0.0.1 is used."""

from __future__ import annotations

import json
import os
import secrets
import string

import pytest

from nixcell.jobs.compile import check_request, compile_request
from nixcell.jobs.config import ServerConfig, credential_policy
from nixcell.jobs.contract import JobError
from nixcell.jobs.model import JobRequest
from nixcell.jobs.profiles import Profile, apply_profiles
from nixcell.runner import run

GH_ENV = "NIXCELL_TEST_JOBS_GH"


def write_files(job_dir, files: dict[str, bytes]) -> None:
    for name, data in files.items():
        path = job_dir / name
        path.write_bytes(data)
        path.chmod(0o644)


def compile_and_run(request: JobRequest, config: ServerConfig, tmp_path, *, workspace=None):
    job_dir = tmp_path / "job"
    job_dir.mkdir(exist_ok=True)
    creds = credential_policy(config, str(tmp_path / "private"))
    compiled = compile_request(
        request,
        config,
        job_dir=str(job_dir),
        workspace=str(workspace) if workspace else None,
        credential_policy=creds,
        audit=str(job_dir / "audit.jsonl"),
    )
    write_files(job_dir, compiled.files)
    return run(compiled.spec, capture_output=True), job_dir


def test_a_script_job_runs_with_its_env_and_cannot_touch_its_script(offline_set, tmp_path):
    config = ServerConfig(state_dir=str(tmp_path / "state"))
    script = (
        'printf "%s|%s|%s\\n" "$GREETING" "$(pwd)" "$0"\n'
        "echo changed > /nixcell-job/script 2>/dev/null && echo WROTE\n"
        "ls -A /nixcell-job\n"
        "exit 3\n"
    )
    (tmp_path / "job").mkdir()
    (tmp_path / "job" / "audit.jsonl").write_text("the server's, not the cell's\n")
    request = JobRequest(packages=["bash", "coreutils"], script=script, env={"GREETING": "a b"})
    result, job_dir = compile_and_run(request, config, tmp_path)
    assert result.exit_code == 3, result
    assert result.stdout.decode() == "a b|/workspace|/nixcell-job/script\nscript\n"
    assert (job_dir / "script").read_text() == script


def test_the_workspace_is_bound_read_write_and_cwd_starts_in_it(offline_set, tmp_path):
    config = ServerConfig(state_dir=str(tmp_path / "state"))
    work = tmp_path / "workspace"
    (work / "sub").mkdir(parents=True)
    request = JobRequest(
        packages=["bash", "coreutils"],
        command=["bash", "-c", "pwd; echo made > here.txt"],
        cwd="sub",
    )
    result, _ = compile_and_run(request, config, tmp_path, workspace=work)
    assert result.exit_code == 0, result
    assert result.stdout.decode() == "/workspace/sub\n"
    assert (work / "sub" / "here.txt").read_text() == "made\n"


def test_the_servers_maximum_timeout_caps_a_job_that_names_none(offline_set, tmp_path):
    config = ServerConfig(state_dir=str(tmp_path / "state"), maxima={"timeout": 1.0})
    request = JobRequest(packages=["coreutils"], command=["sleep", "600"])
    result, _ = compile_and_run(request, config, tmp_path)
    assert result.timed_out and result.exit_code == 124


def test_profiles_merged_then_compiled_run(offline_set, tmp_path):
    config = ServerConfig(state_dir=str(tmp_path / "state"))
    profiles = {
        "shell": Profile(name="shell", packages=("bash", "coreutils"), env={"FROM": "profile"}),
        "greet": Profile(name="greet", script='echo "$FROM $EXTRA"'),
    }
    request = JobRequest(env={"EXTRA": "request"}, profiles=["shell", "greet"])
    check_request(request, config, profiles)
    merged = apply_profiles(request, request.profiles, profiles)
    result, _ = compile_and_run(merged, config, tmp_path)
    assert result.exit_code == 0, result
    assert result.stdout.decode() == "profile request\n"


def test_network_through_a_server_policy_and_a_server_credential(
    offline_set, plain, tmp_path, monkeypatch
):
    plain.seen.clear()
    real = "ghp_" + "".join(secrets.choice(string.ascii_letters + string.digits) for _ in range(36))
    monkeypatch.setenv(GH_ENV, real)
    policy = tmp_path / "local.toml"
    policy.write_text(
        f"""
[[rules]]
action = "allow"
port = {plain.port}
[rules.pattern]
host = "up.test"

[[rules]]
action = "allow"
[rules.pattern]
cidr = "127.0.0.1/32"

[resolve]
"up.test" = "127.0.0.1"
"""
    )
    credential = {
        "name": "github",
        "source": f"env:{GH_ENV}",
        "hosts": ["up.test"],
        "env": "GITHUB_TOKEN",
        "allow_plaintext": True,
    }
    config = ServerConfig(
        state_dir=str(tmp_path / "state"),
        policies={"local": str(policy)},
        credentials=(credential,),
    )
    url = f"http://up.test:{plain.port}/echo-auth"
    request = JobRequest(
        packages=["bash", "coreutils", "curl"],
        script=(
            'printf "%s\\n" "$GITHUB_TOKEN"\n'
            f'curl -sS -H "Authorization: Bearer $GITHUB_TOKEN" {url}\n'
        ),
        policies=["local"],
        credentials=["github"],
    )
    result, job_dir = compile_and_run(request, config, tmp_path)
    assert result.exit_code == 0, result
    dummy, echoed = result.stdout.decode().splitlines()
    assert dummy != real and len(dummy) == len(real)
    assert echoed == f"auth=Bearer {dummy}"  # the real one came back scrubbed
    seen = [{k.lower(): v for k, v in s.headers.items()} for s in plain.seen]
    assert [h.get("authorization") for h in seen] == [f"Bearer {real}"]
    records = [json.loads(line) for line in (job_dir / "audit.jsonl").read_text().splitlines()]
    assert records and all(real not in json.dumps(r) for r in records)
    assert real not in (tmp_path / "private" / "credentials.toml").read_text()
    assert real not in result.stdout.decode() + result.stderr.decode()


def test_without_the_server_policy_the_client_cannot_reach_loopback(tmp_path):
    config = ServerConfig(state_dir=str(tmp_path / "state"))
    with pytest.raises(JobError, match="only a server policy"):
        check_request(
            JobRequest(packages=["curl"], command=["curl"], allow_cidrs=["127.0.0.1/32"]),
            config,
            {},
        )
    assert os.path.exists(tmp_path) and not os.path.exists(tmp_path / "state")

"""``flake_shell``: a devShell's packages become the cell's (resolved from the server's set and
run in a real cell); hostile flakes (reading host files through a link, the server's env,
fetching a path: input, other inputs) are refused in one line and read nothing."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from types import SimpleNamespace

import pytest
from tests.unit.test_jobs_tar import make_tar, member

from nixcell import CellSpec, run
from nixcell.jobs.contract import JobError
from nixcell.jobs.model import Caller, Job, JobRequest
from nixcell.jobs.workspace import Workspaces

OWNER = Caller("uid:0", "root")
SECRET = "nixcell-flake-secret-4f9c2a"

GOOD = """{
  description = "tools";
  inputs.nixpkgs.url = "github:NixOS/nixpkgs/nixos-24.11";
  outputs = { self, nixpkgs }:
    let pkgs = nixpkgs.legacyPackages.x86_64-linux;
        other = import nixpkgs { system = "x86_64-linux"; };
    in {
      devShells.x86_64-linux.default = pkgs.mkShell {
        packages = [ pkgs.jq (pkgs.python3.withPackages (ps: [ ps.pyyaml ])) ];
        nativeBuildInputs = [ other.coreutils ];
      };
    };
}
"""

LINK_FLAKE = (
    "{ outputs = { self, nixpkgs }: { devShells.x86_64-linux.default = "
    "nixpkgs.legacyPackages.x86_64-linux.mkShell "
    "{ packages = [ (builtins.readFile ./leak) ]; }; }; }"
)
HOSTILE = [
    (
        "reads a host file by path",
        "{ outputs = { self, nixpkgs }: throw (builtins.readFile /etc/hostname); }",
        "forbidden in restricted mode",
    ),
    (
        "reads the server's environment",
        '{ outputs = { self, nixpkgs }: throw ("x" + builtins.getEnv "NIXCELL_FLAKE_SECRET"); }',
        "x",
    ),
    (
        "wants a path: input",
        '{ inputs.etc = { url = "path:/etc"; flake = false; };'
        " outputs = { self, nixpkgs, etc }: { }; }",
        "needs the input 'etc'",
    ),
    (
        "fetches by itself",
        "{ outputs = { self, nixpkgs }: "
        'throw (builtins.readFile (builtins.fetchGit "file:///etc")); }',
        "forbidden in restricted mode",
    ),
    ("has no devShell", "{ outputs = { self, nixpkgs }: { }; }", "has no devShells"),
    (
        "uses a package the set lacks",
        "{ outputs = { self, nixpkgs }: { devShells.x86_64-linux.default = "
        "nixpkgs.legacyPackages.x86_64-linux.mkShell "
        "{ packages = [ nixpkgs.legacyPackages.x86_64-linux.nosuchpkg ]; }; }; }",
        "nosuchpkg",
    ),
    (
        "is not a mkShell",
        "{ outputs = { self, nixpkgs }: { devShells.x86_64-linux.default = { }; }; }",
        "is not nixpkgs.legacyPackages",
    ),
    ("is not nix", "{ this is not nix", "syntax error"),
    (
        "names a package with terminal escapes",
        "{ outputs = { self, nixpkgs }: { devShells.x86_64-linux.default = "
        "nixpkgs.legacyPackages.x86_64-linux.mkShell "
        '{ packages = [ nixpkgs.legacyPackages.x86_64-linux."\x1b[31mred\u202e" ]; }; }; }',
        "missing",
    ),
    (
        "reads a missing file",
        "{ outputs = { self, nixpkgs }: throw (builtins.readFile ./missing); }",
        "/workspace/missing",
    ),
]


def prepare(tmp_path: Path, flake: str, extra: tuple = ()) -> tuple:
    ws = Workspaces(SimpleNamespace(state_dir=str(tmp_path / "state")))
    body = make_tar(member("flake.nix", data=flake.encode()), *extra)

    async def chunks():
        yield body

    upload_id = asyncio.run(ws.store_upload(OWNER, chunks()))
    job_dir = tmp_path / "jobs" / "3"
    job_dir.mkdir(parents=True, exist_ok=True)
    job = Job(id=3, owner=OWNER.key, owner_name="root", request={}, state="preparing", created=0)
    request = JobRequest(
        command=["true"], nixpkgs="offline", workspace={"upload": upload_id, "flake_shell": True}
    )
    return ws, asyncio.run(ws.prepare(job, request, str(job_dir)))


def test_devshell_packages_run_in_a_real_cell(offline_set, tmp_path):
    _, got = prepare(tmp_path, GOOD)
    assert got.packages == ("jq", "python3", "python3Packages.pyyaml", "coreutils")
    spec = CellSpec(
        command=["sh", "-c", "jq -n 6*7 && python3 -c 'import yaml; print(yaml.__name__)'"],
        packages=list(got.packages),
        workdir=got.path,
    )
    result = run(spec, capture_output=True)
    assert result.exit_code == 0, result.stderr
    assert result.stdout == b"42\nyaml\n"


@pytest.mark.parametrize(("flake", "why"), [h[1:] for h in HOSTILE], ids=[h[0] for h in HOSTILE])
def test_hostile_flakes_are_refused_and_read_nothing(
    offline_set, tmp_path, monkeypatch, flake, why
):
    monkeypatch.setenv("NIXCELL_FLAKE_SECRET", SECRET)
    with pytest.raises(JobError) as info:
        prepare(tmp_path, flake)
    message = str(info.value)
    assert message.startswith("flake.nix: ")
    assert why in message
    assert "\n" not in message and len(message) < 400
    assert SECRET not in message
    assert str(tmp_path) not in message
    assert all(c.isprintable() for c in message), message


def test_a_link_to_a_host_file_is_not_read(offline_set, tmp_path):
    """A clone (or a cell, for a later job) can hold ``leak -> /etc/shadow``: nix refuses it."""
    from nixcell.jobs.flakeshell import devshell_packages

    flake = LINK_FLAKE
    work = tmp_path / "w"
    work.mkdir()
    (work / "flake.nix").write_text(flake)
    os.symlink("/etc/shadow", work / "leak")
    with pytest.raises(JobError) as info:
        devshell_packages(str(work), state_dir=str(tmp_path / "state"), nixpkgs="offline")
    assert "access to canonical path '/etc/shadow' is forbidden" in str(info.value)
    shadow = Path("/etc/shadow").read_text() if os.access("/etc/shadow", os.R_OK) else ""
    for line in shadow.splitlines():
        if ":" in line and len(line.split(":")[1]) > 3:
            assert line.split(":")[1] not in str(info.value)


def test_flake_nix_must_be_a_plain_file(offline_set, tmp_path):
    from nixcell.jobs.flakeshell import devshell_packages

    work = tmp_path / "w"
    work.mkdir()
    os.symlink("/etc/hostname", work / "flake.nix")
    with pytest.raises(JobError, match="not a regular file"):
        devshell_packages(str(work), state_dir=str(tmp_path / "state"), nixpkgs="offline")
    os.unlink(work / "flake.nix")
    with pytest.raises(JobError, match=r"has no flake\.nix"):
        devshell_packages(str(work), state_dir=str(tmp_path / "state"), nixpkgs="offline")

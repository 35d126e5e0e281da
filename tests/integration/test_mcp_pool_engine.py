"""The pool's engine side without an MCP server: what a pooled cell is keyed by, discarding
stale cells, and the runner's ``on_exit`` (the answer before the teardown). Real cells."""

from __future__ import annotations

import asyncio
import dataclasses
import os
import subprocess
from typing import Any

import pytest

pytestmark = pytest.mark.integration


def _shell(tmp_path, **changes: Any) -> tuple[Any, Any]:
    """A prepared shell environment (no sessions) and its server config."""
    from nixcell.mcp.config import ServerConfig, preset_env

    (tmp_path / "p").mkdir(exist_ok=True)
    env = dataclasses.replace(preset_env("shell"), sessions=False, **changes)
    return env, ServerConfig({"shell": env}, str(tmp_path / "p"))


def _mine() -> set[str]:
    from nixcell.sandbox.cgroups import list_cell_cgroups

    return {c.name for c in list_cell_cgroups() if c.name.startswith(f"{os.getpid()}-")}


def test_pool_key_covers_what_a_cell_was_started_with(offline_set, tmp_path):
    """Every field a cell depends on changes the key (limits, packages, network, policy file
    contents, project, interpreter, configuration); equal inputs give equal keys."""
    from nixcell.mcp.config import ServerConfig
    from nixcell.mcp.envs import prepare_env
    from nixcell.mcp.pool import pool_key

    policy = tmp_path / "policy.toml"
    policy.write_text('[[rules]]\naction = "allow"\n[rules.pattern]\nhost = "a.test"\n')
    base_env, server = _shell(tmp_path)
    variants = {
        "memory": dataclasses.replace(base_env, memory_mb=128),
        "pids": dataclasses.replace(base_env, pids=32),
        "timeout": dataclasses.replace(base_env, timeout=3.0),
        "packages": dataclasses.replace(base_env, packages=(*base_env.packages, "curl")),
        "hosts": dataclasses.replace(base_env, network={"allow_hosts": ["a.test"]}),
        "policy": dataclasses.replace(
            base_env, network={"allow_hosts": [], "policy_files": [str(policy)]}
        ),
        "config": dataclasses.replace(base_env, description="other"),
    }
    keys = {"base": pool_key(prepare_env(base_env, server))}
    assert keys["base"] == pool_key(prepare_env(base_env, server))  # nothing changed
    for name, env in variants.items():
        keys[name] = pool_key(prepare_env(env, server))
    moved = ServerConfig({"shell": base_env}, str(tmp_path / "p"), mount_point="/elsewhere")
    keys["project"] = pool_key(prepare_env(base_env, moved))
    with_policy = prepare_env(variants["policy"], server)
    before = pool_key(with_policy)
    policy.write_text('[[rules]]\naction = "allow"\n[rules.pattern]\nhost = "b.test"\n')
    keys["policy edited"] = pool_key(with_policy)  # the same Prepared, the file changed
    assert before == keys["policy"]
    assert None not in keys.values()
    assert len(set(keys.values())) == len(keys), keys


def test_a_changed_environment_discards_its_waiting_cells(offline_set, tmp_path):
    """A call whose prepared environment differs from the pool's (a config reload, an edited
    policy) never gets a waiting cell: those are killed and the call runs fresh."""
    from nixcell.mcp.envs import prepare_env
    from nixcell.mcp.pool import CellPool
    from nixcell.sandbox.cgroups import list_cell_cgroups

    env, server = _shell(tmp_path)
    old = prepare_env(env, server)
    new = prepare_env(dataclasses.replace(env, memory_mb=128), server)

    async def main() -> None:
        pool = CellPool(1)
        try:
            pool.refill(old)
            for _ in range(600):
                cells = pool._cells.get("shell", [])
                if cells and cells[0].ready.done():
                    break
                await asyncio.sleep(0.05)
            (waiting,) = pool._cells["shell"]
            assert waiting.ready.result() is True
            mine = [c for c in list_cell_cgroups() if c.name.startswith(f"{os.getpid()}-")]
            assert len({c.name for c in mine}) == 1  # (one dir per controller on v1)
            assert await pool.run(new, "echo hi") is None  # not pooled: the caller runs fresh
            await asyncio.wait({waiting.task}, timeout=30)
            assert waiting.task.done()  # the old cell was killed ...
            await asyncio.sleep(0.5)
            assert not any(c.exists() for c in mine)  # ... and its cgroup removed
            for _ in range(600):  # the pool refills for the new environment
                cells = pool._cells.get("shell", [])
                if cells and cells[0].ready.done():
                    break
                await asyncio.sleep(0.05)
            outcome = await pool.run(new, 'echo "$(stat -c %h "$0")"')
            assert outcome is not None and outcome.stdout == "1\n", outcome
            await asyncio.sleep(0.5)  # refilled
            (refilled,) = pool._cells["shell"]
            pool.retain({"python"})  # the environment is gone: so is its waiting cell
            await asyncio.wait({refilled.task}, timeout=30)
            assert refilled.task.done() and "shell" not in pool._cells
        finally:
            await pool.close()
        assert _mine() == set()

    asyncio.run(main())


@pytest.mark.parametrize("cancel", [False, True])
def test_on_exit_answers_before_a_teardown_that_still_completes(offline_set, tmp_path, cancel):
    """The engine hands a pooled call its result before the cell's teardown, and finishes the
    teardown even when the task is cancelled during it (then ends cancelled)."""
    from nixcell.mcp.envs import prepare_env
    from nixcell.runner import execute_async

    prepared = prepare_env(*_shell(tmp_path))
    assert prepared.plan is not None and prepared.plan.limits.needs_cgroup
    plan = prepared.plan.with_command(["bash", "-c", "exit 7"])

    async def main() -> None:
        seen: list[tuple[int, set[str]]] = []
        task: asyncio.Task[Any] | None = None

        def on_exit(result: Any) -> None:
            seen.append((result.exit_code, _mine()))
            if cancel and task is not None:
                task.cancel()

        task = asyncio.ensure_future(
            execute_async(
                plan, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, on_exit=on_exit
            )
        )
        await asyncio.wait({task})
        assert task.cancelled() is cancel
        if not cancel:
            assert task.result().exit_code == 7
        ((code, cgroups),) = seen
        assert code == 7 and len(cgroups) == 1  # told while the cgroup was still there
        assert _mine() == set()  # and it is gone when the task is done

    asyncio.run(main())

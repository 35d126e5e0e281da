"""Environments made ready for the ``run`` tool, and the tool's description of them.

Each environment compiles to a CellSpec (its packages, limits and network; the project read-only
at its mount point) and is prepared once — closure resolved, plan made — in a worker thread, all
environments concurrently. The server answers at once; a call to an environment still being
prepared waits for it, and one that failed reports why while the others stay usable.
"""

from __future__ import annotations

import asyncio
import glob
import logging
from dataclasses import dataclass

from nixcell.mcp.config import PROGRAMS, EnvConfig, ServerConfig

TYPE_CHECKING = False
if TYPE_CHECKING:
    from nixcell.plan import Plan
    from nixcell.spec import CellSpec

log = logging.getLogger(__name__)

MAX_LISTED_PACKAGES = 12


@dataclass(frozen=True)
class Prepared:
    """An environment ready to run (``plan``), or why it is not (``error``)."""

    config: EnvConfig
    plan: Plan | None = None  # the one-shot cell; the tool swaps in the command and code file
    session_spec: CellSpec | None = None  # for persistent sessions: no overall timeout
    packages: tuple[str, ...] = ()  # what was resolved (optional packages may be missing)
    notes: tuple[str, ...] = ()
    error: str | None = None


def cell_spec(
    env: EnvConfig,
    server: ServerConfig,
    packages: list[str],
    *,
    timeout: float | None,
    extra_env: dict[str, str] | None = None,
) -> CellSpec:
    from nixcell.spec import make_spec

    mounts = []
    if server.project is not None:
        mounts.append({"source": server.project, "target": server.mount_point})
    return make_spec(
        command=[PROGRAMS[env.interpreter]],
        packages=packages,
        nixpkgs=env.nixpkgs,
        env=extra_env or {},
        pass_env=list(server.pass_env),
        mounts=mounts,
        limits={
            "memory": f"{env.memory_mb}M" if env.memory_mb else None,
            "pids": env.pids,
            "timeout": timeout,
        },
        network=env.network,
        backend=env.backend,
    )


def prepare_env(env: EnvConfig, server: ServerConfig) -> Prepared:
    """Resolve and plan one environment (blocking: runs in a worker thread)."""
    from nixcell.errors import NixcellError, UnknownPackageError
    from nixcell.runner import prepare

    packages = list(env.packages)
    notes: list[str] = []
    while True:
        try:
            plan, closure = prepare(cell_spec(env, server, packages, timeout=env.timeout))
            break
        except UnknownPackageError as exc:
            missing = exc.names
            if not missing or any(n not in env.optional or n not in packages for n in missing):
                return Prepared(env, error=exc.message)
            for name in missing:  # optional extras the package set lacks: go on without them
                packages.remove(name)
                notes.append(f"{name.rsplit('.', 1)[-1]} is not in the {exc.where}")
        except NixcellError as exc:
            return Prepared(env, error=exc.message)
    if plan.backend != "bwrap":  # a backend this host cannot run, or that refuses the plan
        from nixcell.sandbox import backends

        try:
            backends.check(plan)
        except NixcellError as exc:
            return Prepared(env, error=exc.message)
    program = PROGRAMS[env.interpreter]
    if not closure.has_program(program):
        return Prepared(env, error=f"no {program} among the environment's packages")
    extra_env: dict[str, str] = {}
    if env.interpreter == "python":
        # A buildEnv's python3 is a link to the interpreter's own store path, which does not
        # look into the env's site-packages: point it there when the env holds Python packages.
        site = sorted(glob.glob(f"{closure.env}/lib/python3*/site-packages"))
        if site:
            extra_env["PYTHONPATH"] = ":".join(site)
    try:
        if extra_env:
            spec = cell_spec(env, server, packages, timeout=env.timeout, extra_env=extra_env)
            plan, _ = prepare(spec)  # the resolution is cached now: no nix call
        session_spec = cell_spec(env, server, packages, timeout=None, extra_env=extra_env)
    except NixcellError as exc:
        return Prepared(env, error=exc.message)
    if env.sessions:
        _warm_session_cell(env, session_spec, notes)
    return Prepared(env, plan, session_spec, tuple(packages), tuple(notes))


def _warm_session_cell(env: EnvConfig, spec: object, notes: list[str]) -> None:
    """Resolve the session cell's closure now (bash/node sessions add python3 for the agent),
    so a first session call does not wait for nix."""
    from nixcell.errors import NixcellError
    from nixcell.runner import prepare

    try:
        from nixcell.mcp.sessions import SessionEnv, agent_spec

        prepare(agent_spec(SessionEnv(env.name, env.interpreter, spec), None, 0))  # type: ignore[arg-type]
    except (NixcellError, ImportError) as exc:
        notes.append(f"sessions unavailable: {getattr(exc, 'message', exc)}")


def _prepare_safely(env: EnvConfig, server: ServerConfig) -> Prepared:
    try:
        return prepare_env(env, server)
    except Exception as exc:  # a bug must cost one environment, not the server
        log.exception("preparing environment '%s' failed", env.name)
        return Prepared(env, error=f"internal error: {type(exc).__name__}: {exc}")


class Environments:
    """The configured environments and their preparation, started on the running loop."""

    def __init__(self, config: ServerConfig) -> None:
        self.config = config
        self._tasks: dict[str, asyncio.Task[Prepared]] = {}

    @property
    def names(self) -> list[str]:
        return list(self.config.environments)

    def start(self) -> None:
        for name, env in self.config.environments.items():
            task = asyncio.ensure_future(asyncio.to_thread(_prepare_safely, env, self.config))
            task.add_done_callback(lambda t, n=name: self._report(n, t))
            self._tasks[name] = task

    def _report(self, name: str, task: asyncio.Task[Prepared]) -> None:
        if task.cancelled():
            return
        prepared = task.result()
        if prepared.error:
            log.error("environment '%s' is unavailable: %s", name, prepared.error)
        else:
            extra = f" ({'; '.join(prepared.notes)})" if prepared.notes else ""
            log.info("environment '%s' ready%s", name, extra)

    async def get(self, name: str) -> Prepared | None:
        task = self._tasks.get(name)
        return None if task is None else await asyncio.shield(task)

    def peek(self, name: str) -> Prepared | None:
        task = self._tasks.get(name)
        return task.result() if task is not None and task.done() else None

    async def settle(self, timeout: float) -> None:
        """Wait (bounded) until every environment is prepared or failed."""
        pending = [t for t in self._tasks.values() if not t.done()]
        if pending:
            await asyncio.wait(pending, timeout=timeout)

    def cancel(self) -> None:
        for task in self._tasks.values():
            task.cancel()

    # -- the tool description ------------------------------------------------------------
    def describe(self, *, sessions_available: bool, idle_timeout: float = 300) -> str:
        envs = self.config.environments.values()
        lines = [
            "Run code in a fresh sandboxed cell holding only the environment's Nix packages "
            "(nothing else of the host).",
            "Environments (env: interpreter; packages):",
        ]
        lines += [f"- {self._env_line(env)}" for env in envs]
        common = _limits(next(iter(envs)))
        project = ""
        if self.config.project is not None:
            project = f" The project is mounted read-only at {self.config.mount_point}."
        lines.append(
            "The code is run as a file by the interpreter, with cwd /workspace (writable, "
            f"discarded after the call).{project} No network unless noted. Limits: {common} "
            "unless noted. Output over 1 MiB per stream is cut."
        )
        with_sessions = [e.name for e in envs if e.sessions]
        if sessions_available and with_sessions:
            lines.append(
                'Sessions: pass session="<name>" to run in a persistent interpreter that keeps '
                "variables, files and cwd between calls (envs: "
                f"{', '.join(with_sessions)}); close_session ends one; one unused for "
                f"{idle_timeout:g} s ends by itself."
            )
        lines.append(
            "Returns stdout, stderr (after --- stderr ---) and the exit code; isError when the "
            "code failed or timed out."
        )
        return "\n".join(lines)

    def _env_line(self, env: EnvConfig) -> str:
        prepared = self.peek(env.name)
        packages = list(prepared.packages if prepared and prepared.packages else env.packages)
        shown = [_package_name(p) for p in packages[:MAX_LISTED_PACKAGES]]
        if len(packages) > MAX_LISTED_PACKAGES:
            shown.append(f"+{len(packages) - MAX_LISTED_PACKAGES} more")
        line = f"{env.name}: {env.interpreter}; {', '.join(shown)}"
        extras = []
        if env.description:
            extras.append(env.description)
        first = next(iter(self.config.environments.values()))
        if _limits(env) != _limits(first):
            extras.append(_limits(env))
        if env.network:
            hosts = env.network.get("allow_hosts") or []
            extras.append("network: " + (", ".join(hosts) if hosts else "by policy"))
        if prepared is None:
            extras.append("being prepared")
        elif prepared.error:
            extras.append(f"UNAVAILABLE: {prepared.error}")
        else:
            extras += prepared.notes
        return line + (f" ({'; '.join(extras)})" if extras else "")


def _package_name(package: str) -> str:
    """As the model should read it: ``pyyaml``, ``sandbox-env-data`` (not its store hash)."""
    if package.startswith("/nix/store/"):
        return package.rsplit("/", 1)[-1].split("-", 1)[-1]
    return package.removeprefix("python3Packages.")


def _limits(env: EnvConfig) -> str:
    parts = [f"{env.timeout:g} s"]
    if env.memory_mb:
        parts.append(f"{env.memory_mb} MB memory")
    if env.pids:
        parts.append(f"{env.pids} processes")
    return ", ".join(parts)

"""``nixcell run``'s cell flags (packages, env, mounts, limits, terminal) and their compilation
to a CellSpec; ``nixcell shell`` shares them. The network flags are in ``netflags.py``."""

from __future__ import annotations

import os

import click

from nixcell.cli.netflags import network_from_flags
from nixcell.errors import UsageError

HARDENING_HELP = (
    "Weaken one named protection (repeatable): nested-sandbox = allow user/mount namespaces so "
    "bwrap or chromium can run inside; debugger = allow ptrace, process_vm_*, personality "
    "(ADDR_NO_RANDOMIZE) inside the cell; jit-runtime = accepted for nix-jail compatibility, "
    "changes nothing here (nixcell never restricts executable memory)."
)


def _split_mount(value: str, flag: str) -> tuple[str, str]:
    src, sep, dst = value.partition(":")
    if not src:
        raise click.BadParameter(f"{flag} needs SRC[:DST], got {value!r}")
    src = os.path.abspath(os.path.expanduser(src))
    return src, (dst if sep and dst else src)


def _env_pairs(values: tuple[str, ...]) -> dict[str, str]:
    env = {}
    for item in values:
        key, sep, val = item.partition("=")
        if not sep:
            raise click.BadParameter(f"-e needs K=V, got {item!r}")
        env[key] = val
    return env


def _completer(name: str):
    """A shell_complete callback that imports cli/completion.py only when a shell asks."""

    def complete(ctx: click.Context, param: click.Parameter, incomplete: str) -> list:
        from nixcell.cli import completion

        return getattr(completion, name)(ctx, param, incomplete)

    return complete


def run_options(f):
    opts = [
        click.option(
            "-p",
            "--package",
            "packages",
            multiple=True,
            metavar="PKG",
            help="Nix package: attribute path, store path or flake#attr (repeatable).",
            shell_complete=_completer("complete_package"),
        ),
        click.option(
            "--nixpkgs",
            metavar="PIN",
            help="Package set: nixos-24.11, nixos-unstable, a 40-hex commit, a path, or 'offline'.",
            shell_complete=_completer("complete_pin"),
        ),
        click.option("-e", "--env", "env", multiple=True, metavar="K=V", help="Set a variable."),
        click.option(
            "--pass-env",
            multiple=True,
            metavar="NAME",
            help="Pass a host variable through (skipped when unset).",
        ),
        click.option(
            "--workdir",
            metavar="DIR",
            help="Host dir bound read-write at /workspace (default: a fresh tmpfs).",
        ),
        click.option(
            "--cwd",
            default="/workspace",
            show_default=True,
            metavar="DIR",
            help="Directory inside the cell to start in.",
        ),
        click.option("--ro-bind", multiple=True, metavar="SRC[:DST]", help="Read-only mount."),
        click.option("--bind", multiple=True, metavar="SRC[:DST]", help="Read-write mount."),
        click.option(
            "--hide",
            multiple=True,
            metavar="PATH",
            help="Hide a path inside a mount (cell path or host path).",
        ),
        click.option("--memory", metavar="SIZE", help="Memory limit, e.g. 256M (cgroup)."),
        click.option("--cpus", type=float, metavar="N", help="CPU limit, e.g. 1.5 (cgroup)."),
        click.option("--pids", type=int, metavar="N", help="Max processes+threads (cgroup)."),
        click.option(
            "--timeout", metavar="DURATION", help="Kill the cell after e.g. 30s; exit 124."
        ),
        click.option(
            "--disk",
            metavar="SIZE",
            help="Size of each writable tmpfs area (/tmp, home, fresh /workspace).",
        ),
        click.option(
            "--hardening-profile",
            "profiles",
            multiple=True,
            metavar="NAME",
            help=HARDENING_HELP,
            shell_complete=_completer("complete_profile"),
        ),
        click.option(
            "-i",
            "--interactive",
            is_flag=True,
            help="Give the cell its own pseudo-terminal even when stdin or stdout is not one.",
        ),
        click.option(
            "-T",
            "--no-tty",
            is_flag=True,
            help="No pseudo-terminal (default: one when stdin and stdout are terminals).",
        ),
        click.option(
            "--no-sh",
            is_flag=True,
            help="Do not add dash for /bin/sh (it then exists only if the packages bring a sh).",
        ),
        click.option(
            "--store",
            type=click.Choice(["closure", "readonly", "shared", "copy", "isolated"]),
            help="What the cell sees of /nix/store: its closure only (default), the whole store "
            "read-only, that plus the Nix daemon (shared), or a copy of the closure in "
            "--store-dir (copy: refreshed each run; isolated: copied once, then frozen).",
        ),
        click.option(
            "--store-dir",
            metavar="DIR",
            help="Host dir holding the copy of --store copy/isolated.",
        ),
        click.option(
            "--host-network",
            is_flag=True,
            help="Share the host's network namespace: no proxy, no policy (only when asked).",
        ),
        click.option(
            "--backend",
            type=click.Choice(["bwrap", "gvisor", "microvm", "docker", "systemd", "auto"]),
            help="What isolates the cell: bubblewrap (default), gVisor, a microVM (QEMU), "
            "Docker, a systemd unit, or auto (the first that runs here). `nixcell doctor` "
            "lists which this host can run.",
        ),
    ]
    for opt in reversed(opts):
        f = opt(f)
    return f


def _no_packages(command: tuple[str, ...]) -> UsageError:
    """A run without -p is refused (a cell holds only what it names), with the package of the
    offline set that has the command when there is one."""
    from nixcell.nix.missing import provider_of
    from nixcell.nix.offline import find_set

    found = find_set()
    program = command[0] if command else ""
    provider = provider_of(program, found.packages) if found and program else None
    example = f"-p {provider}" if provider else "-p bash -p coreutils"
    where = f" ({program} is in {provider})" if provider and provider != program else ""
    return UsageError(
        f"no packages: a cell holds only the packages named with -p; add {example}{where}"
    )


def spec_from_flags(command: tuple[str, ...], **o: object):
    from nixcell.spec import make_spec

    if not o["packages"]:
        raise _no_packages(command)

    mounts = []
    for flag, writable in (("ro_bind", False), ("bind", True)):
        for value in o[flag]:  # type: ignore[attr-defined]
            src, dst = _split_mount(str(value), f"--{flag.replace('_', '-')}")
            mounts.append({"source": src, "target": dst, "writable": writable})
    # parents first (a stable sort): --bind D after --ro-bind D/sub would leave D/sub writable
    mounts.sort(key=lambda m: os.path.normpath(m["target"]).count("/"))
    workdir = o["workdir"]
    hides = [
        os.path.abspath(os.path.expanduser(str(h))) if not str(h).startswith("/") else str(h)
        for h in o["hide"]
    ]  # type: ignore[attr-defined]
    if o["interactive"] and o["no_tty"]:
        raise click.UsageError("-i/--interactive and -T/--no-tty exclude each other")
    return make_spec(
        command=list(command),
        packages=list(o["packages"]),  # type: ignore[call-overload]
        nixpkgs=o["nixpkgs"],
        env=_env_pairs(o["env"]),  # type: ignore[arg-type]
        pass_env=list(o["pass_env"]),  # type: ignore[call-overload]
        workdir=os.path.abspath(os.path.expanduser(str(workdir))) if workdir else None,
        cwd=o["cwd"],
        mounts=mounts,
        hide=hides,
        limits={
            "memory": o["memory"],
            "cpus": o["cpus"],
            "pids": o["pids"],
            "timeout": o["timeout"],
            "disk": o["disk"],
        },
        hardening_profiles=list(o["profiles"]),  # type: ignore[call-overload]
        network=network_from_flags(o),
        tty="always" if o["interactive"] else "never" if o["no_tty"] else "auto",
        sh=not o.get("no_sh"),
        store=o.get("store") or "closure",
        store_dir=os.path.abspath(os.path.expanduser(str(o["store_dir"])))
        if o.get("store_dir")
        else None,
        host_network=bool(o.get("host_network")),
        backend=o.get("backend") or "bwrap",
    )

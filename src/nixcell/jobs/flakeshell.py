"""``workspace.flake_shell``: the packages of the workspace's ``flake.nix`` devShell.

The flake is the client's code, evaluated on the host (as root, for a root daemon), so it is
evaluated the one way that cannot read the host: ``nix-instantiate --eval`` in **restricted
mode** with only the workspace and a stub on the search path (``builtins.readFile /etc/...``,
links out of the workspace, ``fetchGit``/``fetchurl`` of anything, ``<nixpkgs>`` and
``storePath`` are all refused by nix; ``getEnv`` is ""), no import-from-derivation, no
substituters, a scrubbed environment, a timeout and an address-space limit. Nothing is built.

Flake inputs are never fetched (offline, and a ``path:/root/...`` input would copy host files
into the store): the flake gets exactly two inputs, ``self`` and ``nixpkgs`` — a stub whose
``legacyPackages.<system>`` (and ``import nixpkgs {}``) holds a marker for each package of the
server's package set, and ``mkShell``. The devShell's ``packages``/``buildInputs``/
``nativeBuildInputs`` are read back as package *names*, and those are resolved like ``-p``
names, in the cell's closure, by the normal pipeline. A flake that needs another input, a
package the set lacks, or a shell that is not ``mkShell`` of such packages is refused with one
line.
"""

from __future__ import annotations

import hashlib
import json
import os
import resource
import subprocess
import tempfile
from typing import Any

from nixcell.fsio import private_dir, write_atomic
from nixcell.jobs.contract import JobError
from nixcell.jobs.gitrefs import printable, shown
from nixcell.quiet import suppress

TIMEOUT = 60.0
MEMORY = 2 << 30
_MARK = "nixcell-flake:"

_EXPR = r"""
let
  stub = import <nixcellstub/stub.nix>;
  flake = import <nixcellws/flake.nix>;
  sys = stub.system;
  given = { self = outputs // { outPath = <nixcellws>; }; nixpkgs = stub.nixpkgs; };
  wanted = builtins.functionArgs flake.outputs;
  needed = builtins.filter (n: !(given ? ${n}) && !wanted.${n}) (builtins.attrNames wanted);
  outputs =
    if needed != [] then throw "nixcell-flake:input ${builtins.head needed}"
    else flake.outputs given;
  shells = outputs.devShells.${sys} or {};
  shell =
    if shells ? default then shells.default
    else if outputs ? devShell && outputs.devShell ? ${sys} then outputs.devShell.${sys}
    else throw "nixcell-flake:noshell";
  items = (shell.packages or []) ++ (shell.buildInputs or []) ++ (shell.nativeBuildInputs or [])
    ++ (shell.propagatedBuildInputs or []);
  names = p:
    if builtins.isAttrs p && p ? nixcellPackages then p.nixcellPackages
    else if builtins.isAttrs p && p ? nixcellPackage then [ p.nixcellPackage ]
    else throw "nixcell-flake:foreign";
in
  if !(shell ? nixcellShell) then throw "nixcell-flake:notmkshell"
  else builtins.concatLists (map names items)
"""

_STUB_HEAD = r"""
let
  system = "@SYSTEM@";
  mk = name: {
    type = "derivation"; inherit name; nixcellPackage = name;
    outPath = "/nixcell-stub/${name}";
    withPackages = f: {
      type = "derivation"; name = "${name}-env"; outPath = "/nixcell-stub/${name}-env";
      nixcellPackages = [ name ] ++ map (p: p.nixcellPackage) (f (pkgs."${name}Packages" or {}));
    };
  };
  shell = args: args // {
    type = "derivation"; nixcellShell = true; outPath = "/nixcell-stub/shell";
  };
  pkgs = names // { mkShell = shell; mkShellNoCC = shell; inherit system; lib = { }; };
  names = @NAMES@;
in {
  inherit system pkgs;
  nixpkgs = { legacyPackages.${system} = pkgs; outPath = ./.; lib = { }; };
}
"""
_DEFAULT_NIX = "args: (import ./stub.nix).pkgs\n"

_REASONS = {
    "noshell": "it has no devShells.{system}.default (nor devShell.{system})",
    "notmkshell": "its devShell is not nixpkgs.legacyPackages.{system}.mkShell",
    "foreign": "its devShell holds something other than packages of the server's package set",
}


def _names_expr(names: list[str]) -> str:
    tree: dict[str, Any] = {}
    for name in names:
        node = tree
        *path, last = name.split(".")
        for part in path:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                break
        else:
            node.setdefault(last, name)

    def render(node: dict[str, Any]) -> str:
        items = []
        for key, value in sorted(node.items()):
            inner = f"mk {json.dumps(value)}" if isinstance(value, str) else render(value)
            items.append(f"{json.dumps(key)} = {inner};")
        return "{ " + " ".join(items) + " }"

    return render(tree)


def package_names(nixpkgs: str | None) -> list[str]:
    """The names a devShell may use: the server's package set's (offline: every attribute;
    a nixpkgs: its top-level attributes)."""
    from nixcell.nix.pins import source_for

    source = source_for(nixpkgs)
    if source.kind == "offline":
        from nixcell.nix.offline import find_set

        found = find_set()
        return sorted(found.packages) if found else []
    from nixcell.nix.builderror import known_names

    return sorted(
        n for n in known_names(source) if n.replace("_", "a").replace("-", "a").isalnum()
    )


def _stub_dir(state_dir: str, names: list[str]) -> str:
    from nixcell.nix.resolve import system

    text = _STUB_HEAD.replace("@SYSTEM@", system()).replace("@NAMES@", _names_expr(names))
    digest = hashlib.sha256(text.encode()).hexdigest()[:24]
    directory = private_dir(os.path.join(state_dir, "flake-stub", digest))
    for name, data in (("stub.nix", text), ("default.nix", _DEFAULT_NIX)):
        if not os.path.isfile(os.path.join(directory, name)):
            write_atomic(os.path.join(directory, name), data, mode=0o644)
    return directory


def devshell_packages(
    workspace: str, *, state_dir: str, nixpkgs: str | None, timeout: float = TIMEOUT
) -> tuple[str, ...]:
    """The package names of ``workspace``/flake.nix's devShell, or a one-line JobError."""
    from nixcell.mcp.flakebuild import impure_env
    from nixcell.nix.resolve import nix_tool

    _check_flake_file(workspace)
    stub = _stub_dir(state_dir, package_names(nixpkgs))
    env = {k: v for k, v in impure_env(os.environ).items() if k not in ("NIX_PATH",)}
    env.update(NIX_PATH="", HOME=stub)
    argv = [nix_tool("nix-instantiate"), "--eval", "--strict", "--json"]
    for key, value in (
        ("restrict-eval", "true"),
        ("allowed-uris", ""),
        ("allow-import-from-derivation", "false"),
        ("substituters", ""),
        ("pure-eval", "false"),
    ):
        argv += ["--option", key, value]
    argv += ["-I", f"nixcellws={workspace}", "-I", f"nixcellstub={stub}", "-E", _EXPR]
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        proc = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=out, stderr=err, env=env, cwd=stub
        )
        with suppress(OSError):
            resource.prlimit(proc.pid, resource.RLIMIT_AS, (MEMORY, MEMORY))
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            raise JobError(f"flake.nix: evaluating its devShell took over {timeout:g} s") from None
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read(1 << 20), err.read(1 << 16).decode(errors="replace")
    if proc.returncode != 0:  # nix names paths: the cell's view, not the server's dirs
        stderr = stderr.replace(workspace, "/workspace").replace(state_dir, "<state>")
        why = printable(_reason(stderr))
        raise JobError(f"flake.nix: cannot use its devShell here: {why}")
    try:
        names = json.loads(stdout)
    except ValueError:
        raise JobError("flake.nix: its devShell gave no package list") from None
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise JobError("flake.nix: its devShell gave no package list")
    return tuple(dict.fromkeys(names))


def _check_flake_file(workspace: str) -> None:
    try:
        fd = os.open(
            os.path.join(workspace, "flake.nix"), os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK
        )
    except FileNotFoundError:
        raise JobError("workspace.flake_shell: the workspace has no flake.nix") from None
    except OSError:
        raise JobError("workspace.flake_shell: flake.nix is not a regular file") from None
    try:
        import stat

        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise JobError("workspace.flake_shell: flake.nix is not a regular file")
    finally:
        os.close(fd)


def _reason(stderr: str) -> str:
    from nixcell.nix.resolve import system

    sys = system()
    if _MARK in stderr:
        code = stderr.split(_MARK, 1)[1].split()[0].strip("'\"")
        if code.startswith("input"):
            name = stderr.split(_MARK + "input", 1)[1].split()[0].strip("'\"")
            return (
                f"it needs the input {shown(name, 40)}, which cannot be fetched here "
                "(only nixpkgs, the server's package set, is given)"
            )
        if code in _REASONS:
            return _REASONS[code].replace("{system}", sys)
    for line in stderr.splitlines():
        if "attribute" in line and "missing" in line:
            return line.split("error:", 1)[-1].strip()[:200] + " (not in the server's package set)"
    lines = [ln.strip() for ln in stderr.splitlines() if ln.strip()]
    first = next((ln for ln in lines if "error:" in ln), lines[-1] if lines else "nix failed")
    return shown(first.split("error:", 1)[-1].strip(), 200)[1:-1]

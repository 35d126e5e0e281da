"""The offline set's pure and host-only parts: no nix, no root, no sandbox."""

from __future__ import annotations

import importlib.util
import os
import py_compile
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from nixcell.errors import UnknownPackageError
from nixcell.nix.offline import claude, elf, recipe, setfile
from nixcell.nix.offline.build import wanted
from nixcell.nix.offline.python import compile_pycs
from nixcell.nix.offline.stage import Stager, _ldd
from nixcell.nix.offline.store import nix_string
from nixcell.nix.offline.wrapper import compile_wrapper, wrapper_source

HOST_PYTHON = Path(sys.executable).resolve()


def test_wanted_accepts_aliases_and_rejects_unknown_names():
    assert wanted(["python311", "bash", "python3"]) == ["bash", "python3"]
    assert wanted(["nodejs_22"]) == ["nodejs"]
    assert wanted(None) == list(recipe.RECIPES)
    with pytest.raises(UnknownPackageError, match="'rustc'"):
        wanted(["rustc"])


def test_required_packages_have_recipes():
    required = "bash coreutils python3 nodejs curl git jq gnugrep gnused gawk findutils diffutils"
    for name in required.split():
        assert recipe.canonical(name) == name
    assert recipe.canonical("busybox") == "busybox"
    assert recipe.canonical("python311") == "python3"
    assert recipe.canonical("nope") is None


@pytest.mark.parametrize(
    ("debian", "upstream"),
    [
        ("1:2.39.5-0+deb12u3", "2.39.5"),
        ("5.2.15-2+b8", "5.2.15"),
        ("1.34+dfsg-1.2+deb12u1", "1.34"),
        ("1:1.35.0-4+deb12u1+b1", "1.35.0"),
        ("", None),
    ],
)
def test_upstream_version(debian, upstream):
    assert recipe.upstream_version(debian) == upstream


def test_nix_string_escapes_interpolation_and_quotes():
    assert nix_string('a"b${c}\\d') == '"a\\"b\\${c}\\\\d"'
    assert nix_string("$out") == '"$out"'  # a lone $ is not interpolation


def test_render_set_nix_names_every_attr_by_store_path():
    attrs = {
        "busybox": "/nix/store/" + "a" * 32 + "-busybox-1.35.0",
        "python311": "/nix/store/" + "b" * 32 + "-python3-3.11.2",
    }
    text = setfile.render_set_nix("x86_64-linux", attrs)
    for name, path in attrs.items():
        assert f'"{name}" = builtins.storePath "{path}";' in text
    assert "buildEnv = mkBuildEnv" in text
    with pytest.raises(ValueError, match="busybox"):
        setfile.render_set_nix("x86_64-linux", {"bash": attrs["python311"]})


def test_state_roundtrip_keeps_aliases_and_does_not_rewrite_unchanged(tmp_path):
    state = setfile.State(recipe="r", system="x86_64-linux")
    state.packages["busybox"] = setfile.Entry("/nix/store/x-busybox", "k1")
    state.packages["python3"] = setfile.Entry("/nix/store/y-python3", "k2", ["python311"])
    written = setfile.write_set(tmp_path, state)
    again = setfile.read_state(tmp_path)
    assert again is not None
    assert again.attrs() == {
        "busybox": "/nix/store/x-busybox",
        "python3": "/nix/store/y-python3",
        "python311": "/nix/store/y-python3",
    }
    assert again.ident == written.ident and len(written.ident) == 32
    stamp = (tmp_path / "set.json").stat().st_mtime_ns
    os.utime(tmp_path / "set.json", ns=(1, 1))
    setfile.write_set(tmp_path, again)
    assert (tmp_path / "set.json").stat().st_mtime_ns == 1 != stamp  # left alone


def test_read_state_rejects_garbage(tmp_path):
    assert setfile.read_state(tmp_path) is None
    (tmp_path / "set.json").write_text('{"schema": 99}')
    assert setfile.read_state(tmp_path) is None


def test_inputs_unchanged_notices_a_modified_file(tmp_path):
    f = tmp_path / "f"
    f.write_text("one")
    st = f.stat()
    recorded = {str(f): [st.st_size, st.st_mtime_ns, st.st_ino]}
    assert setfile.inputs_unchanged(recorded)
    f.write_text("other")
    assert not setfile.inputs_unchanged(recorded)
    f.unlink()
    assert not setfile.inputs_unchanged(recorded)


def test_read_elf_on_a_host_binary_and_on_text(tmp_path):
    info = elf.read_elf(HOST_PYTHON)
    assert info is not None and info.dynamic
    assert info.interpreter is not None and info.interpreter.startswith("/")
    assert any(n.startswith("libc.so") for n in info.needed) or "libpython" in str(info.needed)
    text = tmp_path / "t.txt"
    text.write_text("#!/bin/sh\n" * 20)
    assert elf.read_elf(text) is None
    assert not elf.is_elf(text)


@pytest.mark.skipif(shutil.which("patchelf") is None, reason="needs patchelf")
def test_elf_sees_what_patchelf_wrote(tmp_path):
    copy = tmp_path / "py"
    shutil.copy(HOST_PYTHON, copy)
    interp = "/nix/store/" + "e" * 32 + "-glibc/lib/ld-linux-x86-64.so.2"
    subprocess.run(
        ["patchelf", "--set-interpreter", interp, "--set-rpath", "$ORIGIN/../lib:/x", str(copy)],
        check=True,
    )
    info = elf.read_elf(copy)
    assert info is not None
    assert info.interpreter == interp
    assert info.search_path == "$ORIGIN/../lib:/x"
    offset = elf.interp_offset(copy)
    assert offset is not None
    assert copy.read_bytes()[offset : offset + len(interp) + 1] == interp.encode() + b"\0"


def test_ldd_lists_libc_for_a_host_binary():
    deps = _ldd([HOST_PYTHON])[HOST_PYTHON]
    names = {os.path.basename(name) for name, _host in deps}
    assert "libc.so.6" in names
    assert all(host is None or host.startswith("/") for _name, host in deps)


def test_wrapper_source_quotes_strings():
    src = wrapper_source(['@/bin/x"y'], {"A": "b\\c"})
    assert '"@/bin/x\\"y"' in src and '"b\\\\c"' in src
    with pytest.raises(ValueError):
        wrapper_source([])
    with pytest.raises(ValueError):
        wrapper_source(["a\nb"])


@pytest.mark.skipif(shutil.which("cc") is None, reason="needs a C compiler")
def test_wrapper_finds_its_root_through_a_symlink(tmp_path):
    root = tmp_path / "pkg"
    (root / "bin").mkdir(parents=True)
    target = root / "bin" / "target"
    target.write_text('#!/bin/sh\necho "$0 $* FOO=$FOO"\n')
    target.chmod(0o755)
    compile_wrapper(root / "bin" / "w", ["@/bin/target", "-x"], {"FOO": "@/share"})
    env_bin = tmp_path / "env" / "bin"
    env_bin.mkdir(parents=True)
    (env_bin / "w").symlink_to(root / "bin" / "w")  # how a buildEnv exposes it
    out = subprocess.run([env_bin / "w", "a", "b c"], capture_output=True, text=True, check=True)
    assert out.stdout == f"{target} -x a b c FOO={root}/share\n"
    assert not list((root / "bin").glob("*.c"))


def test_stager_tree_keeps_inner_links_and_resolves_outer_ones(tmp_path):
    src = tmp_path / "src"
    (src / "sub").mkdir(parents=True)
    (src / "sub" / "a.txt").write_text("a")
    (src / "inner").symlink_to("sub/a.txt")
    outside = tmp_path / "outside.txt"
    outside.write_text("o")
    (src / "outer").symlink_to(outside)
    (src / "dangling").symlink_to("/nonexistent/x")
    (src / "test").mkdir()
    (src / "test" / "t.py").write_text("")
    stager = Stager(tmp_path / "stage", None)
    stager.tree(src, "lib/x", skip=lambda rel: rel == "test")
    out = tmp_path / "stage" / "lib" / "x"
    assert os.readlink(out / "inner") == "sub/a.txt"
    assert not (out / "outer").is_symlink() and (out / "outer").read_text() == "o"
    assert not (out / "dangling").exists() and not (out / "dangling").is_symlink()
    assert not (out / "test").exists()
    assert str(outside) in stager.inputs and str(src / "sub" / "a.txt") in stager.inputs


def test_pycs_become_unchecked_hash_pycs(tmp_path):
    lib = tmp_path / "lib"
    lib.mkdir()
    mod = lib / "mod.py"
    mod.write_text("X = 1\n")
    pyc = Path(importlib.util.cache_from_source(str(mod)))
    py_compile.compile(str(mod), cfile=str(pyc))  # timestamp-based, like Debian's
    orphan = pyc.with_name("gone." + pyc.name.split(".", 1)[1])
    orphan.write_bytes(pyc.read_bytes())
    fresh = lib / "fresh.py"
    fresh.write_text("Y = 2\n")
    compile_pycs(HOST_PYTHON, lib)
    head = pyc.read_bytes()[:16]
    assert int.from_bytes(head[4:8], "little") == 1  # hash-based, unchecked
    assert head[8:16] == importlib.util.source_hash(mod.read_bytes())
    assert not orphan.exists()
    assert Path(importlib.util.cache_from_source(str(fresh))).exists()


@pytest.mark.parametrize(
    ("package_json", "expected"),
    [
        (None, None),  # not fetched
        ('{"version": "2.1.333"}', "2.1.333"),
        ('{"version": "2.1.0-beta.1"}', "2.1.0-beta.1"),
        ('{"version": "latest"}', None),  # not a version: no store name from it
        ('{"version": "2.1/../x"}', None),
        ('{"version": "2.1 x"}', None),
        ('{"version": 2}', None),
        ('["version"]', None),
        ("{not json", None),
        ('{"name": "x"}', None),
    ],
)
def test_claude_code_version_from_its_package_json(tmp_path, package_json, expected):
    pkg = claude.package_dir(tmp_path)
    if pkg is None:
        pytest.skip("no claude-code build for this machine")
    if package_json is not None:
        pkg.mkdir(parents=True)
        (pkg / "package.json").write_text(package_json)
    assert claude.version(tmp_path) == expected


def test_claude_code_is_a_recipe_with_an_npm_version(tmp_path):
    r = recipe.RECIPES["claude-code"]
    assert recipe.canonical("claude-code") == "claude-code"
    pkg = claude.package_dir(tmp_path)
    if pkg is None:
        pytest.skip("no claude-code build for this machine")
    pkg.mkdir(parents=True)
    (pkg / "package.json").write_text('{"version": "2.0.1"}')
    ctx = recipe.Context(busybox="/nix/store/x", node_prefix=tmp_path, claude_prefix=tmp_path)
    assert recipe.store_name(r, ctx) == "claude-code-2.0.1"

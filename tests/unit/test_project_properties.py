"""Property tests of the two inputs a cell (or another user) can shape: the config text and
the directory tree discovery walks. Whatever they hold, loading is a Project or one
``UsageError`` line naming the file, and discovery never returns a config that someone else
could have written or that sits inside another project."""

from __future__ import annotations

import os
import shutil
import tempfile

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from nixcell.errors import UsageError
from nixcell.project import schema
from nixcell.project.discover import find
from nixcell.project.load import load

_scalars = st.one_of(
    st.booleans(),
    st.integers(min_value=-(2**63), max_value=2**63 - 1),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=12),
    st.sampled_from(["strict", "relaxed", "open", "host", "none", "4G", "1h", "copy", "bash"]),
)
_values = st.one_of(
    _scalars,
    st.lists(_scalars, max_size=3),
    st.dictionaries(st.sampled_from(["A", "B_1", "1x", "a-b"]), _scalars, max_size=2),
)
_keys = st.one_of(
    st.sampled_from(sorted(schema.KEYS)),
    st.tuples(
        st.sampled_from([*schema.TABLES, "tools", "sandbox.extra"]),
        st.text("abcxyz_", min_size=1, max_size=6),
    ),
)


def _toml_value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return (
            '"'
            + "".join(c if c.isalnum() or c in " .-_~/:*" else f"\\u{ord(c):04x}" for c in value)
            + '"'
        )
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    assert isinstance(value, dict)
    return "{ " + ", ".join(f'"{k}" = {_toml_value(v)}' for k, v in value.items()) + " }"


def _document(entries: list[tuple[tuple[str, str], object]]) -> str:
    tables: dict[str, dict[str, object]] = {}
    for (table, key), value in entries:
        tables.setdefault(table, {})[key] = value
    return "".join(
        f"[{table}]\n" + "".join(f"{k} = {_toml_value(v)}\n" for k, v in keys.items())
        for table, keys in tables.items()
    )


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    entries=st.lists(st.tuples(_keys, _values), max_size=6),
    name=st.sampled_from(["nixcell.toml", "nixcage.toml"]),
    junk=st.text(max_size=8),
)
def test_any_config_loads_or_is_one_line_naming_the_file(entries, name, junk):
    root = tempfile.mkdtemp()
    try:
        text = _document(entries) + (junk if "\n" not in junk else "")
        with open(os.path.join(root, name), "w") as f:
            f.write(text)
        try:
            project = load(find(root))  # type: ignore[arg-type]
        except UsageError as exc:
            message = str(exc)
            assert "\n" not in message and message.startswith(os.path.join(root, name)), message
        else:
            assert (
                project.level in schema.LEVELS and project.config.store_mode in schema.STORE_MODES
            )
            assert all(w.startswith(os.path.join(root, name)) for w in project.warnings)
    finally:
        shutil.rmtree(root)


_nodes = st.lists(
    st.tuples(
        st.integers(min_value=0, max_value=3),  # depth of the directory holding it
        st.sampled_from(["nixcell.toml", "nixcage.toml"]),
        st.sampled_from(["ok", "symlink", "group-writable", "other-owner", "dir"]),
    ),
    max_size=4,
)


@settings(max_examples=200, deadline=None)
@given(nodes=_nodes, start_depth=st.integers(min_value=0, max_value=3))
def test_discovery_returns_only_a_trusted_unnested_config(nodes, start_depth):
    base = tempfile.mkdtemp()
    try:
        dirs = [os.path.join(base, *["d"] * i) for i in range(4)]
        os.makedirs(dirs[-1])
        for depth, name, how in nodes:
            path = os.path.join(dirs[depth], name)
            if os.path.lexists(path):
                continue
            if how == "symlink":
                os.symlink("/etc/hostname", path)
            elif how == "dir":
                os.mkdir(path)
            else:
                with open(path, "w"):
                    pass
                os.chmod(path, 0o664 if how == "group-writable" else 0o644)
                if how == "other-owner" and os.getuid() == 0:
                    os.chown(path, 4242, 4242)
        try:
            found = find(dirs[start_depth])
        except UsageError as exc:
            assert "\n" not in str(exc)
            return
        holders = [
            d
            for d in dirs[: start_depth + 1]
            if any(
                os.path.lexists(os.path.join(d, n))
                for n, _ in (("nixcell.toml", 0), ("nixcage.toml", 0))
            )
        ]
        if found is None:
            assert holders == []
            return
        # the nearest holder, the only holder on the way up, a regular file of ours, not writable
        assert holders == [found.root]
        st_ = os.lstat(found.path)
        assert os.path.isfile(found.path) and not os.path.islink(found.path)
        assert st_.st_uid in (0, os.getuid()) and not st_.st_mode & 0o022
    finally:
        shutil.rmtree(base)

"""`nixcell status` and run's config warnings never pass a control character to the terminal
(outside review of issue 10): a config value or a path holding an escape sequence (OSC 52
writes the clipboard, OSC 0 the title, CSI moves the cursor) or a newline (a forged
`network   host` line) is written as escapes. Real CLI on a real pty, where click strips
nothing."""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile

import pexpect
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tests.conftest import NIXCELL

_controls = st.sampled_from(
    [
        "\x1b]52;c;ZWNobyBoaQ==\x07",
        "\x1b]0;T\x07",
        "\x1b[2J",
        "\x1b[31m",
        "\n",
        "\r",
        "\x9b1m",
        "\x7f",
        "\x08",
        "\x00",
    ]
)
_text = st.lists(
    st.one_of(_controls, st.text("abc/ .-", min_size=1, max_size=3)), min_size=1, max_size=4
).map("".join)
_keys = st.sampled_from(
    [
        ("nix", "packages"),
        ("cage", "command"),
        ("sandbox.filesystem", "ro_bind"),
        ("sandbox.filesystem", "rw_bind"),
        ("sandbox.filesystem", "blacklist"),
        ("sandbox.network", "allow_hosts"),
        ("nix", "nixpkgs"),
    ]
)
FORBIDDEN = {chr(c) for c in [*range(0, 9), *range(11, 32), *range(0x7F, 0xA0)]}


def _pty(args: list[str], cwd: str) -> str:
    child = pexpect.spawn(
        NIXCELL,
        args,
        cwd=cwd,
        env={**os.environ, "TERM": "xterm"},
        encoding="utf-8",
        codec_errors="replace",
        timeout=120,
    )
    out = child.read()
    child.close()
    return out.replace("\r\n", "\n")


@settings(max_examples=12, deadline=None, suppress_health_check=list(HealthCheck))
@given(entries=st.lists(st.tuples(_keys, _text), min_size=1, max_size=3), dirname=_text)
def test_status_and_warnings_escape_control_characters(entries, dirname):
    base = tempfile.mkdtemp()
    try:
        name = "p" + dirname.replace("/", "_").replace("\x00", "0")
        root = os.path.join(base, name)
        os.mkdir(root)
        tables: dict[str, list[str]] = {}
        for (table, key), value in entries:
            value = json.dumps(value)  # a TOML basic string (\uXXXX escapes)
            rhs = value if key == "nixpkgs" else f"[{value}]"
            tables.setdefault(table, []).append(f"{key} = {rhs}")
        text = "".join(f"[{t}]\n" + "\n".join(dict.fromkeys(v)) + "\n" for t, v in tables.items())
        with open(os.path.join(root, "nixcell.toml"), "w") as f:
            f.write(text)
        for args in (["status"], ["run", "--dry-run", "--", "true"]):
            out = _pty(args, root)
            assert _only_our_colours(out), (args, text, out)
            assert "\nnetwork   host" not in out and not out.startswith("network   host"), out
    finally:
        shutil.rmtree(base)


def _only_our_colours(out: str) -> bool:
    """True when the only control characters in ``out`` are the colour nixcell itself puts
    around a whole line (click.secho: ESC [ ... m first, ESC [ 0m last)."""
    lines = [re.sub(r"^(?:\x1b\[[0-9;]*m)+|\x1b\[0m$", "", line) for line in out.split("\n")]
    return not any(FORBIDDEN & set(line) for line in lines)

"""The code blocks of a Markdown document, read as a user reads them (test_readme.py runs them).

Conventions (write new examples this way and they are tested with no change to the test):

```console blocks
    $ COMMAND                 a command, run by bash in the test's scratch directory; a line
      ending in a backslash continues on the next one
    OUTPUT                    lines the command prints (stdout and stderr together): each must
                              appear, in this order; other lines may come between them (a notice
                              on stderr, say). Compared without surrounding blanks.
    ...                       inside a line: any text ("removed ... stale cgroup(s)"); a line of
                              only "..." marks lines left out, and matches nothing itself
    TEXT  # NOTE              two spaces then "#": a note for the reader, not output
    # NOTE                    a line of only a note: not output
    # exit N                  in a note of the command or of its output: the exit code it must
                              have (default 0)
```python blocks:    run with the test's Python; ``print(...)  # TEXT`` expects the output line
                     TEXT (in order, like console output).
```json blocks:      one holding "mcpServers" is an MCP client config: each server is started
                     as written and sent a `run` call.
Other blocks (plain ``` fences, ```toml ...) are shown to the reader, not run.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

FENCE = re.compile(r"^```(\S*)\s*$")
NOTE = re.compile(r"^(.*?\S)?\s{2,}#\s.*$|^\s*#(\s.*)?$")
EXIT = re.compile(r"#.*\bexit (\d+)\b")
ELLIPSIS = "..."


@dataclass
class Block:
    lang: str
    line: int  # 1-based line of the opening fence
    text: str


@dataclass
class Command:
    text: str  # what bash runs (continuations joined)
    line: int  # where it starts in the document
    expected: list[str] = field(default_factory=list)
    exit_code: int = 0


def blocks(markdown: str) -> list[Block]:
    """Every fenced block, with its language tag ("" for a plain fence)."""
    out: list[Block] = []
    lines = markdown.splitlines()
    i = 0
    while i < len(lines):
        m = FENCE.match(lines[i])
        if m is None:
            i += 1
            continue
        start, body = i, []
        i += 1
        while i < len(lines) and not lines[i].startswith("```"):
            body.append(lines[i])
            i += 1
        if i == len(lines):
            raise ValueError(f"line {start + 1}: code block never closed")
        out.append(Block(m.group(1), start + 1, "\n".join(body)))
        i += 1
    return out


def strip_note(line: str) -> str | None:
    """The output part of a line (None when the line is only a note)."""
    m = NOTE.match(line)
    if m is None:
        return line.strip()
    return None if m.group(1) is None else m.group(1).strip()


def commands(block: Block) -> list[Command]:
    """The ``$ `` commands of a console block with their expected output and exit code."""
    out: list[Command] = []
    lines = block.text.splitlines()
    i = 0
    while i < len(lines):
        number = block.line + 1 + i
        raw = lines[i]
        if not raw.startswith("$ "):
            if out:
                _expect(out[-1], raw)
            elif raw.strip() and strip_note(raw) is not None:
                raise ValueError(f"line {number}: output before any `$ ` command: {raw!r}")
            i += 1
            continue
        parts = [raw[2:]]
        while parts[-1].endswith("\\") and i + 1 < len(lines):
            i += 1
            parts.append(lines[i])
        text = "\n".join(parts)
        code = EXIT.search(text)
        out.append(Command(text, number, exit_code=int(code.group(1)) if code else 0))
        i += 1
    return out


def _expect(command: Command, raw: str) -> None:
    code = EXIT.search(raw)
    if code:
        command.exit_code = int(code.group(1))
    line = strip_note(raw)
    if line and line != ELLIPSIS:
        command.expected.append(line)


def python_expected(block: Block) -> list[str]:
    """``print(...)  # TEXT`` lines of a python block: the output lines it promises."""
    out = []
    for raw in block.text.splitlines():
        m = re.match(r"^\s*print\(.*\)\s{2,}#\s?(.*)$", raw)
        if m:
            out.append(m.group(1).strip())
    return out


def _pattern(expected: str) -> re.Pattern[str]:
    return re.compile(".*".join(re.escape(p) for p in expected.split(ELLIPSIS)) + r"\Z")


def missing(expected: list[str], output: str) -> str | None:
    """The first expected line not found (in order) in ``output``; None when all are."""
    actual = [line.strip() for line in output.splitlines()]
    at = 0
    for want in expected:
        pattern = _pattern(want)
        while at < len(actual) and not pattern.match(actual[at]):
            at += 1
        if at == len(actual):
            return want
        at += 1
    return None

"""The README test's reading of code blocks (tests/integration/docblocks.py), table-driven."""

from __future__ import annotations

import pytest
from tests.integration import docblocks

DOC = """
Some text.

```console
$ nixcell run -p bash -- echo hi
hi
$ nixcell run --timeout 2s -- sleep 9
nixcell: timed out after 2s          # exit 124, every process gone
$ nixcell gc   # note only
removed ... stale cgroup(s); done
$ long \\
      --flag  # exit 3
# a note line, not output
  "login": "...",
...
last
```

```python
print(6 * 7)          # 42
x = 1  # not a print
# print(1)  # commented out
```

```
$ not run: a plain fence
```
"""


def test_blocks_and_commands():
    found = docblocks.blocks(DOC)
    assert [(b.lang, b.line) for b in found] == [("console", 4), ("python", 19), ("", 25)]
    cmds = docblocks.commands(found[0])
    assert [(c.text, c.line, c.exit_code) for c in cmds] == [
        ("nixcell run -p bash -- echo hi", 5, 0),
        ("nixcell run --timeout 2s -- sleep 9", 7, 124),
        ("nixcell gc   # note only", 9, 0),
        ("long \\\n      --flag  # exit 3", 11, 3),
    ]
    assert cmds[0].expected == ["hi"]
    assert cmds[1].expected == ["nixcell: timed out after 2s"]
    assert cmds[2].expected == ["removed ... stale cgroup(s); done"]
    assert cmds[3].expected == ['"login": "...",', "last"]
    assert docblocks.python_expected(found[1]) == ["42"]


@pytest.mark.parametrize(
    ("expected", "output", "lost"),
    [
        (["hi"], "hi\n", None),
        (["hi"], "notice on stderr\nhi\n", None),
        (["hi"], "hi there\n", "hi"),  # whole lines, not substrings
        (["a", "b"], "b\na\n", "b"),  # in order
        (["a", "a"], "a\n", "a"),  # each expected line consumes one output line
        (["removed ... stale"], "removed 3 stale\n", None),
        (["removed ... stale"], "removed 3 stale cgroups\n", "removed ... stale"),
        (['"login": "...",'], '  "login": "octocat",\n', None),
        (["x.y"], "xzy\n", "x.y"),  # the rest is literal, not a regex
        ([], "", None),
    ],
)
def test_missing(expected, output, lost):
    assert docblocks.missing(expected, output) == lost


@pytest.mark.parametrize(
    "bad",
    ["```console\n$ x\n", "```console\nstray output\n$ x\n```\n"],
    ids=["unclosed", "output-before-command"],
)
def test_malformed_docs_are_errors(bad):
    with pytest.raises(ValueError):
        for block in docblocks.blocks(bad):
            docblocks.commands(block)

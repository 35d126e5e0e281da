"""The --debug summariser (debugtrace.py) on real strace output and on hostile lines.

``data/strace_cell.txt`` is the trace ``sandbox/tracer.py`` read from a real cell running
``data/strace_prog.py`` (python3 of the offline set: three threads, a fork, a directory whose
name holds a newline, ESC, an invalid byte, a bidi override and '<x>').
"""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from nixcell import debugtrace as dt

DATA = Path(__file__).parent / "data"
CLOSURE = frozenset(
    p.encode()
    for p in (
        "/nix/store/660mkjwi2x9a3hybbl25njx3pdbwjdxl-dash-0.5.12",
        "/nix/store/awhm5wk36y8gzfj36ais2dra7qxaxkzm-nixcell-env",
        "/nix/store/kdh4y5l878rifiapijn39mmrbbi4fbsj-glibc-2.36",
        "/nix/store/swnc82w3bmsr6xi4g48i4vdfnqc3jn4c-busybox-1.35.0",
        "/nix/store/zqa1mdqrzgxdl4sjqcnramzwa0icnn25-python3-3.11.2",
    )
)
HOSTILE = "/tmp/a\\nb\\x1b[31m\\xff\\u202e<x>"  # how the summary shows that directory


def summarise(lines, **fields) -> dt.Summary:
    summary = dt.Summary(closure=fields.pop("closure", CLOSURE), **fields)
    for line in lines:
        summary.feed(line)
    return summary


def real() -> dt.Summary:
    return summarise(DATA.joinpath("strace_cell.txt").read_text().splitlines())


def test_real_trace_rows():
    lines = DATA.joinpath("strace_cell.txt").read_text().splitlines()
    assert any(line.endswith("<unfinished ...>") for line in lines)  # a thread's exit came between
    rows = real().rows()
    assert rows[0] == (3, "ENOENT", "openat", "/home/cell/.config/foo.json")
    found = {(e, s, p): n for n, e, s, p in rows}
    for i in range(3):  # one per thread (-f follows them)
        assert found[("ENOENT", "openat", f"/home/cell/.config/thread{i}.json")] == 1
    assert found[("EROFS", "openat", "/etc/nixcell-test")] == 1
    # relative paths: resolved with AT_FDCWD<dir>, and with the last dir seen for mkdir("q/r")
    assert found[("ENOENT", "openat", HOSTILE + "/rel")] == 1
    assert found[("ENOENT", "openat", HOSTILE + "/sub/x")] == 1
    assert found[("ENOENT", "mkdir", HOSTILE + "/q/r")] == 1
    assert found[("ECONNREFUSED", "connect", "127.0.0.1:1")] == 1
    assert found[("EXDEV", "rename", "/tmp/x-missing -> /etc/y")] == 1
    # a store path outside the closure is what the sandbox hid (from the forked child)
    outside = "/nix/store/00000000000000000000000000000000-not-in-closure/x"
    assert found[("ENOENT", "openat", outside)] == 1


def test_real_trace_noise_filtered():
    summary = real()
    shown = [p for _, _, _, p in summary.rows(1000)]
    assert summary.noise > 50  # the loader's search paths inside the closure, mostly
    for noise in ("/proc", "/sys", "/dev", "/usr/lib/locale", "/etc/ld.so.preload"):
        assert not any(p == noise or p.startswith(noise + "/") for p in shown), noise
    for item in CLOSURE:
        assert not any(p.startswith(item.decode()) for p in shown)
    assert "/nix/store/lib/python311.zip" not in shown  # bare store lookups
    assert not any("ENOTCONN" in e for _, e, _, _ in summary.rows(1000))  # not a denial


def test_split_calls_are_joined():
    lines = [
        '4 openat(AT_FDCWD</w>, "a", O_RDONLY <unfinished ...>',
        "5 +++ exited with 0 +++",
        "4 <... openat resumed>) = -1 ENOENT (x)",
        '4 openat(AT_FDCWD</w>, "b", O_RDONLY <unfinished ...>',
        ")                   = -1 EACCES (x)",  # strace 6.1 -Z: the rest without pid
        "6 <... openat resumed>) = -1 ENOENT (x)",  # no start seen: dropped
    ]
    rows = summarise(lines).rows()
    assert rows == [(1, "ENOENT", "openat", "/w/a"), (1, "EACCES", "openat", "/w/b")]


def test_state_of_exited_processes_is_dropped():
    summary = summarise(
        [
            '3 openat(AT_FDCWD</d>, "a", O_RDONLY) = -1 ENOENT (x)',
            '4 openat(AT_FDCWD</e>, "b", O_RDONLY <unfinished ...>',
            "3 +++ exited with 0 +++",
            "4 +++ killed by SIGKILL +++",
            '3 mkdir("rel", 0777) = -1 ENOENT (x)',  # a new process 3 (pid reused): cwd unknown
        ]
    )
    assert not summary._cwd and not summary._pending
    assert [r[3] for r in summary.rows()] == ["/d/a", "rel"]


def test_bwraps_own_pid_is_skipped():
    line = '7 openat(AT_FDCWD</>, "/etc/x", O_RDONLY) = -1 ENOENT (No such file or directory)'
    assert summarise([line], skip_pids={7}).total == 0
    assert summarise([line], skip_pids={8}).total == 1


@pytest.mark.parametrize(
    "path,reported",
    [
        ("/proc/self/x", False),
        ("/proc", False),
        ("/procx/a", True),
        ("/dev/tty", False),
        ("/devices", True),
        ("/sys/fs/cgroup", False),
        ("/usr/lib/locale/C/LC_CTYPE", False),
        ("/usr/lib/localex", True),
        ("/etc/ld.so.preload", False),
        ("/etc/ld.so.preloadx", True),
        ("/var/run/nscd/socket", False),
        ("/nix/store/zqa1mdqrzgxdl4sjqcnramzwa0icnn25-python3-3.11.2/lib/x.so", False),
        ("/nix/store/zqa1mdqrzgxdl4sjqcnramzwa0icnn25-python3-3.11.2/../../../etc/x", True),
        ("/nix/store/aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa-other/bin/sh", True),
        ("/nix/store/lib/python311.zip", False),
        ("/nix/lib/python311.zip", False),
        ("/nix/var/nix/daemon-socket/socket", True),
        ("/home/cell/.config/foo.json", True),
    ],
)
def test_noise_table(path, reported):
    line = f'5 openat(AT_FDCWD</w>, "{path}", O_RDONLY) = -1 ENOENT (No such file or directory)'
    assert summarise([line]).total == (1 if reported else 0)


@pytest.mark.parametrize(
    "errno,reported",
    [
        *[("ENOENT", True), ("EACCES", True), ("EROFS", True), ("EPERM", True), ("ENOSPC", True)],
        *[("EEXIST", False), ("EAGAIN", False), ("EINVAL", False), ("ENOTCONN", False)],
    ],
)
def test_errno_table(errno, reported):
    line = f'5 mkdir("/data/x", 0777) = -1 {errno} (whatever)'
    assert summarise([line]).total == (1 if reported else 0)


@pytest.mark.parametrize(
    "line,target",
    [
        ('1 openat(3</etc>, "passwd", O_RDONLY) = -1 EACCES (Permission denied)', b"/etc/passwd"),
        ('1 newfstatat(3</a\\76b>, "", 0x1, AT_EMPTY_PATH) = -1 ENOENT (x)', b"/a>b"),
        ('1 fchmod(3</etc/x>, 0644) = -1 EROFS (x)', b"/etc/x"),
        ('1 openat(AT_FDCWD</w[1>, "a, b)", O_RDONLY) = -1 ENOENT (x)', b"/w[1/a, b)"),
        ('1 openat(AT_FDCWD</w>, "../x", O_RDONLY) = -1 ENOENT (x)', b"/x"),
        ('1 symlinkat("/target", 3</d>, "ln") = -1 EROFS (x)', b"/d/ln"),
        ('1 renameat2(AT_FDCWD</a>, "x", AT_FDCWD</b>, "y", 0) = -1 EXDEV (x)', b"/a/x -> /b/y"),
        ('1 connect(3<TCPv6:[1]>, {sa_family=AF_INET6, sin6_port=htons(443), sin6_flowinfo='
         'htonl(0), inet_pton(AF_INET6, "::1", &sin6_addr), sin6_scope_id=0}, 28)'
         " = -1 ECONNREFUSED (x)", b"[::1]:443"),
        ('1 connect(3<UNIX-STREAM:[2]>, {sa_family=AF_UNIX, sun_path="/run/d.sock"}, 14)'
         " = -1 ENOENT (x)", b"/run/d.sock"),
        ("1 socket(AF_INET6, SOCK_STREAM, IPPROTO_IP) = -1 EAFNOSUPPORT (x)", b"AF_INET6"),
        ('1 fsetxattr(3</etc/x>, "user.a", "v", 1, 0) = -1 EROFS (x)', b"/etc/x"),
        ('1 fchown(0</dev/null<char 1:3>>, 0, 0) = -1 EPERM (x)', b"/dev/null<char 1:3>"),
        ('1 statx(3</d>, "f", AT_STATX_SYNC_AS_STAT, STATX_ALL, 0x1) = -1 ENOENT (x)', b"/d/f"),
        ('1 mkdir("rel", 0777) = -1 ENOENT (x)', b"rel"),  # no cwd known: shown as it is
    ],
)  # fmt: skip
def test_parse_lines(line, target):
    failure = dt.parse_line(line)
    assert failure is not None and failure.target == target


@pytest.mark.parametrize(
    "line",
    [
        "1 +++ exited with 0 +++",
        "1 --- SIGCHLD {si_signo=SIGCHLD} ---",
        '1 openat(AT_FDCWD</>, "/x", O_RDONLY) = 3</x>',
        '1 openat(AT_FDCWD</>, "/x", O_RDONLY <unfinished ...>',
        "1 <... openat resumed>) = -1 ENOENT (x)",
        'openat(AT_FDCWD</>, "/x", O_RDONLY) = -1 ENOENT (x)',  # no pid
        '1 openat(AT_FDCWD</>, "/x", O_RDONLY',  # cut
        "strace: Process 1 attached",
        "",
    ],
)
def test_lines_that_are_no_failure(line):
    assert dt.parse_line(line) is None


@pytest.mark.parametrize(
    "escaped,raw",
    [
        ("a\\nb", b"a\nb"),
        ("\\33[31m", b"\x1b[31m"),
        ("\\x1b", b"\x1b"),
        ("\\377\\303\\251", b"\xff\xc3\xa9"),
        ('\\"q\\"', b'"q"'),
        ("back\\\\slash", b"back\\slash"),
        ("\\0", b"\0"),
        ("\\t\\r\\v\\f", b"\t\r\v\f"),
    ],
)
def test_unescape(escaped, raw):
    assert dt.unescape(escaped) == raw


@pytest.mark.parametrize(
    "raw,shown",
    [
        (b"plain/\xc3\xa9t\xc3\xa9", "plain/été"),
        (b"a\nb", "a\\nb"),
        (b"\x1b]0;pwned\x07", "\\x1b]0;pwned\\x07"),
        (b"\xe2\x80\xae", "\\u202e"),  # right-to-left override
        (b"\xc2\x9b", "\\x9b"),  # C1 CSI as UTF-8
        (b"\xff", "\\xff"),
        (b"\x7f", "\\x7f"),
    ],
)
def test_show(raw, shown):
    assert dt.show(raw) == shown


def strace_escape(data: bytes, special: bytes = b"") -> str:
    """How strace writes a string: printable ASCII as is, the rest (and ``special``: '<>' in an
    fd's path) octal, three digits when a digit follows."""
    out = []
    for i, b in enumerate(data):
        if b in b'"\\':
            out.append("\\" + chr(b))
        elif 0x20 <= b < 0x7F and b not in special:
            out.append(chr(b))
        else:
            digit_next = data[i + 1 : i + 2].isdigit()
            out.append(f"\\{b:03o}" if digit_next else f"\\{b:o}")
    return "".join(out)


@given(st.binary(min_size=1, max_size=80).filter(lambda b: b"\0" not in b and b"/" not in b))
def test_any_name_round_trips_and_prints_safely(name):
    path = b"/w/" + name
    esc = strace_escape(name)
    in_fd = strace_escape(name, b"<>")  # as -yy writes an fd's path
    for line in (
        f'9 openat(AT_FDCWD</w>, "{esc}", O_RDONLY) = -1 ENOENT (x)',
        f'9 openat(3</w/{in_fd}>, "", O_RDONLY) = -1 ENOENT (x)',
    ):
        failure = dt.parse_line(line)
        assert failure is not None
        if name not in (b".", b".."):
            assert failure.target == path
        rows = summarise([line], closure=frozenset()).rows()
        lines = dt.report_lines(summarise([line], closure=frozenset()), None)
        assert all(text.isprintable() for text in lines)
        assert rows and rows[0][3].isprintable()


def test_bounds_unique_rows_and_lines(monkeypatch):
    monkeypatch.setattr(dt, "MAX_UNIQUE", 5)
    monkeypatch.setattr(dt, "MAX_LINES", 30)
    lines = [f'2 openat(AT_FDCWD</>, "/x{i}", O_RDONLY) = -1 ENOENT (x)' for i in range(40)]
    summary = summarise(lines)
    assert len(summary.counts) == 5 and summary.overflow == 25 and summary.unread == 10
    text = dt.report_lines(summary, None)
    assert text[0] == "Sandbox access failures (5+ unique, 30 total):"
    assert any("beyond the first 5" in t for t in text)
    assert any("10 lines not read" in t for t in text)


def test_overlong_line_not_parsed():
    summary = summarise(['2 openat(AT_FDCWD</>, "/' + "x" * dt.MAX_LINE + '", 0) = -1 ENOENT (x)'])
    assert summary.total == 0 and summary.unread == 1


def test_report_top_and_more():
    lines = [
        f'2 openat(AT_FDCWD</>, "/f{i:02}", O_RDONLY) = -1 ENOENT (x)'
        for i in range(25)
        for _ in range(i + 1)
    ]
    text = dt.report_lines(summarise(lines), None)
    assert text[0] == f"Sandbox access failures (25 unique, {sum(range(1, 26))} total):"
    assert text[1].split() == ["25", "ENOENT", "openat", "/f24"]
    assert len(text) == 1 + dt.TOP + 1 and text[-1] == "  ... and 5 more"


def test_report_nothing_and_network_only():
    assert dt.report_lines(dt.Summary(), None) == [
        "Sandbox access failures: none (no file or network access failed, the proxy denied nothing)"
    ]
    text = dt.report_lines(dt.Summary(), "1 request denied: GET evil\x1b[2J.test/x (no rule)")
    assert text[0] == "Sandbox access failures: none" and len(text) == 2
    assert text[-1] == "Network: 1 request denied by the proxy: GET evil\\x1b[2J.test/x (no rule)"

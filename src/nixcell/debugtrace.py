"""``--debug``: what a cell was denied, summarised from ``strace -f -Z -yy`` output.

Pure: trace lines in, counted rows out (the executor side is ``sandbox/tracer.py``). Everything in
a trace line comes from the cell (its paths, its socket addresses), so lines are parsed, never
trusted: strace escapes strings C-style, we decode them to bytes and show them with every control
character, invalid byte and bidi override escaped (``show``): nothing the cell named can drive
the user's terminal. The accumulator is bounded: a cell failing millions of calls costs counting,
not memory, and the summary says how much it did not read.

What counts: a failed file or network syscall of the command or its descendants (bwrap's own
pid-1 is excluded), with an errno that means "not there" or "not allowed" (``_ERRNOS``), outside
the noise nixcage filters too: /proc, /sys, /dev, lookups inside the cell's own closure (the
loader's and interpreters' search paths), bare store lookups (``/nix/store/lib``, python's prefix
search) and glibc's fixed probes (``_NOISE``). A store path outside the closure is reported:
that is the sandbox hiding it.
"""

from __future__ import annotations

import posixpath
import re
from collections import Counter
from dataclasses import dataclass, field

TOP = 20
MAX_LINE = 64 * 1024  # strace prints paths up to -s 4096 bytes, escaped: a line is far shorter
MAX_LINES = 2_000_000  # failure lines summarised; the rest are counted only
MAX_UNIQUE = 10_000  # distinct (errno, syscall, path) rows kept
MAX_PENDING = 4096  # processes whose split call or cwd is kept

# fmt: off
_ERRNOS = frozenset({  # "not there" or "not allowed", for a file, a limit or the network
    "ENOENT", "ENOTDIR", "EACCES", "EPERM", "EROFS", "ENXIO", "ENODEV", "EXDEV", "ENOSPC",
    "EDQUOT", "EFBIG", "ELOOP", "ENAMETOOLONG", "ENETUNREACH", "EHOSTUNREACH", "ECONNREFUSED",
    "EADDRNOTAVAIL", "EAFNOSUPPORT", "EPROTONOSUPPORT",
})
# fmt: on
_HIDDEN_TREES = ("/proc", "/sys", "/dev")
# glibc's and coreutils' fixed probes, missing in every cell and harmless
# fmt: off
_NOISE = frozenset([
    "/etc/ld.so.preload", "/etc/ld.so.cache", "/etc/selinux/config", "/selinux",
    "/var/run/nscd/socket", "/run/nscd/socket",
])
# fmt: on
_NOISE_TREES = ("/usr/lib/locale", "/usr/share/locale", "/usr/lib/gconv", "/etc/selinux")
_NET_CALLS = frozenset(
    ["connect", "bind", "sendto", "sendmsg", "sendmmsg", "socket", "accept", "accept4", "listen"]
)
_TWO_PATHS = frozenset(["rename", "renameat", "renameat2", "link", "linkat"])
_AT_CALLS = frozenset(["statx", "openat2", "name_to_handle_at", "open_tree", "move_mount"])
_LAST_PATH = frozenset(["symlink", "symlinkat"])  # the first string is the link's text

_PID = re.compile(r"(\d+)\s")
_RESUMED = re.compile(r"(\d+)\s+<\.\.\. [a-z_0-9]+ resumed>(.*)", re.DOTALL)
_GONE = re.compile(r"(\d+)\s+\+\+\+ (?:exited|killed) ")
_HEAD = re.compile(r"(\d+)\s+([a-z_0-9]+)\(")
_RESULT = re.compile(r"\)\s+= -1 ([A-Z0-9]+) \(")
_FD = re.compile(r"(?:\d+|AT_FDCWD)<(.*)>")
_FAMILY = re.compile(r"\{sa_family=(AF_[A-Z0-9]+)")
_PORT = re.compile(r"sin6?_port=htons\((\d+)\)")
_ADDR4 = re.compile(r'inet_addr\("([0-9.]+)"\)')
_ADDR6 = re.compile(r'inet_pton\(AF_INET6, "([0-9a-fA-F:.]+)"')
_SUN_PATH = re.compile(r'sun_path=@?("(?:[^"\\]|\\.)*")')
_CWD = re.compile(r"AT_FDCWD<((?:[^>\\]|\\.)*)>")
_STORE_ITEM = re.compile(rb"[0-9a-z]{32}-.")
_ESCAPE = re.compile(rb"\\(x[0-9a-fA-F]{2}|[0-7]{1,3}|.)", re.DOTALL)
_SIMPLE = {b"n": b"\n", b"t": b"\t", b"r": b"\r", b"v": b"\v", b"f": b"\f", b"a": b"\a"}


@dataclass(frozen=True)
class Failure:
    pid: int
    syscall: str
    errno: str
    target: bytes  # a path (resolved when strace showed the directory) or a socket address


def unescape(text: str) -> bytes:
    """Bytes of a string strace printed C-style (quotes removed): \\n, \\33, \\x1b, \\\\."""

    def one(m: re.Match[bytes]) -> bytes:
        code = m.group(1)
        if code[:1] == b"x" and len(code) == 3:
            return bytes([int(code[1:], 16)])
        if code[:1] in b"01234567":
            return bytes([int(code, 8) & 0xFF])
        return _SIMPLE.get(code, code)

    return _ESCAPE.sub(one, text.encode("latin-1", "replace"))


def show(data: bytes) -> str:
    """A cell-chosen name for the terminal: UTF-8 as is, invalid bytes as \\xHH, control and
    format characters (newline, ESC, bidi overrides) as escapes. Always one printable line."""
    text = data.decode("utf-8", "surrogateescape")
    out = []
    for c in text:
        if "\udc80" <= c <= "\udcff":
            out.append(f"\\x{ord(c) - 0xDC00:02x}")
        elif c.isprintable():
            out.append(c)
        else:
            out.append(repr(c)[1:-1])
    return "".join(out)


def split_args(text: str, start: int) -> tuple[list[str], int] | None:
    """Top-level arguments of the call whose '(' is just before ``start``, and the index of its
    ')' — strings, braces, brackets and fd annotations (``3</path>``, nested as in
    ``0</dev/null<char 1:3>>``, opaque to brackets: a path may hold a lone '[') kept whole."""
    args, depth, angle, i, begin = [], 0, 0, start, start
    while i < len(text):
        c = text[i]
        if c == "\\" and angle:
            i += 1
        elif c == "<":
            angle += 1
        elif c == ">" and angle:
            angle -= 1
        elif angle:
            pass
        elif c == '"':
            i += 1
            while i < len(text) and text[i] != '"':
                i += 2 if text[i] == "\\" else 1
        elif c in "({[":
            depth += 1
        elif c in "}]":
            depth = max(depth - 1, 0)
        elif c == ")":
            if depth == 0:
                last = text[begin:i].strip()
                return ([*args, last] if last or args else args), i
            depth -= 1
        elif c == "," and depth == 0:
            args.append(text[begin:i].strip())
            begin = i + 1
        i += 1
    return None


def _string(arg: str) -> bytes | None:
    if len(arg) >= 2 and arg[0] == '"' and arg.endswith(('"', '"...')):
        return unescape(arg[1 : arg.rindex('"')])
    return None


def _fd_path(arg: str) -> bytes | None:
    found = _FD.fullmatch(arg)
    return unescape(found.group(1)) if found else None


def _join(base: bytes | None, path: bytes) -> bytes:
    if not path:
        return base or b""
    if path.startswith(b"/") or base is None:
        return posixpath.normpath(path) if path.startswith(b"/") else path
    return posixpath.normpath(posixpath.join(base, path))


def _paths(syscall: str, args: list[str], cwd: bytes | None) -> bytes | None:
    at = syscall.endswith(("at", "at2")) or syscall in _AT_CALLS
    first = _fd_path(args[0]) if args else None
    if first is not None and not at:  # fchmod(3</etc/x>, ...), fsetxattr: the fd is the target
        return first
    found, base = [], cwd
    for arg in args:
        fd = _fd_path(arg)
        if fd is not None:  # a dirfd: the directory of the path that follows
            base = fd
            continue
        value = _string(arg)
        if value is not None:
            found.append(_join(base, value))
            base = cwd
    if not found:
        return None
    if syscall in _TWO_PATHS and len(found) >= 2:
        return found[0] + b" -> " + found[1]
    return found[-1] if syscall in _LAST_PATH else found[0]


def _address(args: list[str]) -> bytes:
    whole = ", ".join(args)
    family = _FAMILY.search(whole)
    if family is None:  # socket(AF_INET6, ...): the family refused
        return (args[0] if args else "?").encode()
    if family.group(1) == "AF_UNIX":
        path = _SUN_PATH.search(whole)
        return (_string(path.group(1)) or b"") if path else b"unix"
    port = _PORT.search(whole)
    v4, v6 = _ADDR4.search(whole), _ADDR6.search(whole)
    host = v4.group(1) if v4 else f"[{v6.group(1)}]" if v6 else family.group(1)
    return f"{host}:{port.group(1)}".encode() if port else host.encode()


def parse_line(line: str, cwd: bytes | None = None) -> Failure | None:
    """One failed call of a ``strace -f -yy`` line, or None (success, exit, signal, message)."""
    head = _HEAD.match(line)
    if head is None:
        return None
    split = split_args(line, head.end())
    if split is None:
        return None
    args, close = split
    result = _RESULT.match(line, close)
    if result is None:
        return None
    syscall = head.group(2)
    target = _address(args) if syscall in _NET_CALLS else _paths(syscall, args, cwd)
    if target is None:
        return None
    return Failure(int(head.group(1)), syscall, result.group(1), target)


def _under(path: bytes, trees: tuple[str, ...]) -> bool:
    text = path.decode("latin-1")
    return any(text == t or text.startswith(t + "/") for t in trees)


@dataclass
class Summary:
    """Counted failures of one run. ``closure``: the cell's store paths (misses inside them are
    search paths, not denials); ``skip_pids``: bwrap's own processes."""

    closure: frozenset[bytes] = frozenset()
    skip_pids: set[int] = field(default_factory=set)
    counts: Counter[tuple[str, str, bytes]] = field(default_factory=Counter)
    lines: int = 0
    unread: int = 0  # failure lines past MAX_LINES, counted only
    overflow: int = 0  # failures with a row beyond MAX_UNIQUE
    noise: int = 0
    _cwd: dict[int, bytes] = field(default_factory=dict)
    _pending: dict[int, str] = field(default_factory=dict)  # split calls' starts, by pid
    _last: int = -1

    def feed(self, line: str) -> None:
        self.lines += 1
        if self.lines > MAX_LINES:
            self.unread += 1
            return
        if len(line) > MAX_LINE:
            self.unread += 1
            return
        line = self._whole(line)
        if line is None:
            return
        head = _HEAD.match(line)
        pid = int(head.group(1)) if head else 0
        if pid in self.skip_pids:
            return
        if head is None:
            gone = _GONE.match(line)
            if gone is not None:  # its cwd and split call go with it: bounded by live processes
                self._cwd.pop(int(gone.group(1)), None)
                self._pending.pop(int(gone.group(1)), None)
            return
        cwd = _CWD.search(line)
        if cwd is not None and (pid in self._cwd or len(self._cwd) < MAX_PENDING):
            self._cwd[pid] = unescape(cwd.group(1))  # for a later mkdir("rel") of this process
        failure = parse_line(line, self._cwd.get(pid))
        if failure is None or failure.errno not in _ERRNOS:
            return
        if self._noise(failure):
            self.noise += 1
            return
        key = (failure.errno, failure.syscall, failure.target)
        if key in self.counts or len(self.counts) < MAX_UNIQUE:
            self.counts[key] += 1
        else:
            self.overflow += 1

    def _whole(self, line: str) -> str | None:
        """A call strace split in two (another thread's event came between): its start kept
        until the rest, which is "PID <... name resumed>rest" or, with -Z in strace 6.1, a bare
        ")   = -1 ENOENT (...)" line without a pid (taken as the last split call's)."""
        if line.endswith(" <unfinished ...>"):
            found = _PID.match(line)
            if found is not None and len(self._pending) < MAX_PENDING:
                self._pending[int(found.group(1))] = line[: -len(" <unfinished ...>")]
                self._last = int(found.group(1))
            return None
        resumed = _RESUMED.match(line)
        if resumed is not None:
            start = self._pending.pop(int(resumed.group(1)), None)
            return None if start is None else start + resumed.group(2)
        if line.startswith(")") and self._last in self._pending:
            return self._pending.pop(self._last) + line
        return line

    def _noise(self, failure: Failure) -> bool:
        path = failure.target
        if failure.syscall in _NET_CALLS and not path.startswith(b"/"):
            return False
        if _under(path, _HIDDEN_TREES) or _under(path, _NOISE_TREES):
            return True
        if path.decode("latin-1") in _NOISE:
            return True
        if path.startswith(b"/nix/store/"):  # inside the closure, or no store item at all
            item = path.split(b"/")[3]
            return b"/nix/store/" + item in self.closure or not _STORE_ITEM.match(item)
        return _under(path, ("/nix",)) and not _under(path, ("/nix/var",))  # python's prefix

    @property
    def total(self) -> int:
        return sum(self.counts.values()) + self.overflow

    def rows(self, top: int = TOP) -> list[tuple[int, str, str, str]]:
        """(count, errno, syscall, shown path), most frequent first."""
        ranked = sorted(self.counts.items(), key=lambda kv: (-kv[1], kv[0][2], kv[0][:2]))
        return [(n, e, s, show(p)) for (e, s, p), n in ranked[:top]]


def report_lines(summary: Summary, network: str | None, top: int = TOP) -> list[str]:
    """The end-of-run block: the failures table, the proxy's denials, what was cut."""
    if not summary.counts and not summary.overflow and not network and not summary.unread:
        return ["Sandbox access failures: none (no file or network access failed, the proxy "
                "denied nothing)"]  # fmt: skip
    unique = f"{len(summary.counts)}{'+' if summary.overflow else ''}"
    rows = summary.rows(top)
    if rows:
        out = [f"Sandbox access failures ({unique} unique, {summary.total} total):"]
    else:
        out = ["Sandbox access failures: none"]
    e_width = max((len(r[1]) for r in rows), default=0)
    s_width = max((len(r[2]) for r in rows), default=0)
    for count, errno, syscall, path in rows:
        out.append(f"  {count:>5}  {errno:<{e_width}}  {syscall:<{s_width}}  {path}")
    more = len(summary.counts) - len(rows)
    if more > 0:
        out.append(f"  ... and {more} more")
    if summary.overflow:
        out.append(f"  ({summary.overflow} failures at paths beyond the first {MAX_UNIQUE})")
    if summary.unread:
        out.append(f"  (trace cut: {summary.unread} lines not read, too many or too long)")
    if network:  # the proxy's summary ("2 requests denied: GET x.test/a (no rule), ...")
        said = network.replace(" denied: ", " denied by the proxy: ", 1)
        out.append(f"Network: {show(said.encode())}")
    return out

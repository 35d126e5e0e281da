#!/usr/bin/env python3
"""Network benchmark: the policy proxy vs direct, side by side in one run (docs/benchmarks.md).

  .venv/bin/python bench/bench_network.py [--requests 500] [--connections 100] [--runs 20]

Every byte goes to a loopback HTTPS upstream this script starts on 127.0.0.1 (a trustme CA, given
to the cells as ``upstream_ca``; ``up.test`` is pinned to 127.0.0.1 with ``resolve``). The
upstream runs in its own process, so it never competes with the proxy for this process's GIL,
and answers every request with a single TCP_NODELAY write. The same python3 (the offline set's
store path) runs the same client script twice per row: inside a cell through the proxy
(``nixcell.run``), and on the host straight to the upstream. Clients time themselves and print
JSON. Rows: keep-alive GET latency p50/p99; new connection + GET (leaf certificate cached);
100 MB downloads (``--rounds`` rounds alternating direct and proxy, ``--downloads`` each: the
machine's speed drifts, and alternating keeps a drift from landing on one side); 200
simultaneous connections; then the warm CLI with ``--allow-host`` vs srt.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import shutil
import socket
import socketserver
import ssl
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
CACHE = REPO / "bench" / ".cache"
NIXCELL = str(Path(sys.executable).with_name("nixcell"))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from timing import pct, timed  # noqa: E402 - bench/ is not a package

HOST = "up.test"
BIG = 100 * 1000 * 1000
CHUNK = memoryview(b"x" * (1 << 20))
TINY = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 3\r\n\r\nok\n"

# The client, run by the same python3 in a cell (via the proxy) and on the host (direct).
CLIENT = """
import http.client, json, ssl, sys, threading, time
cfg = json.loads(sys.argv[1])
ctx = ssl.create_default_context(cafile=cfg["cafile"])  # in a cell: SSL_CERT_FILE (nixcell CA)
def conn():
    if cfg["proxy"]:
        c = http.client.HTTPSConnection("127.0.0.1", 3128, context=ctx, timeout=60)
        c.set_tunnel(cfg["host"], cfg["port"])
        return c
    return http.client.HTTPSConnection("127.0.0.1", cfg["port"], context=ctx, timeout=60)
def get(c, path="/"):
    c.request("GET", path)
    r = c.getresponse()
    body = r.read()
    if r.status != 200:
        raise RuntimeError(f"status {r.status}: {body[:200]!r}")
    return body
mode, n, ts, out = cfg["mode"], cfg["n"], [], {}
if mode == "latency":
    c = conn()
    for _ in range(20):
        get(c)
    for _ in range(n):
        t = time.perf_counter(); get(c); ts.append(time.perf_counter() - t)
    out["samples"] = ts
elif mode == "connect":
    get(conn())
    for _ in range(n):
        t = time.perf_counter(); c = conn(); get(c); c.close(); ts.append(time.perf_counter() - t)
    out["samples"] = ts
elif mode == "throughput":
    c, buf = conn(), bytearray(1 << 20)
    get(c)
    for _ in range(n):
        t = time.perf_counter()
        c.request("GET", f"/big/{cfg['size']}")
        r, got = c.getresponse(), 0
        while k := r.readinto(buf):
            got += k
        assert got == cfg["size"], got
        ts.append(got / (time.perf_counter() - t) / 1e6)
    out["mbps"] = ts
elif mode == "concurrent":
    barrier, lock, errors, ok = threading.Barrier(n), threading.Lock(), [], []
    def one():
        try:
            barrier.wait(30)
            c = conn(); get(c); c.close()
            with lock: ok.append(1)
        except Exception as e:
            with lock: errors.append(repr(e)[:200])
    t = time.perf_counter()
    threads = [threading.Thread(target=one) for _ in range(n)]
    for th in threads: th.start()
    for th in threads: th.join()
    out = {"ok": len(ok), "errors": errors, "wall": time.perf_counter() - t}
print(json.dumps(out))
"""


# -- the upstream: `bench_network.py --serve CHAIN` in its own process ---------------------------
class _Handler(socketserver.BaseRequestHandler):
    context: ssl.SSLContext

    def handle(self) -> None:
        self.request.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        with contextlib.suppress(OSError, ValueError):
            tls = self.context.wrap_socket(self.request, server_side=True)
            buf = b""
            while True:
                while b"\r\n\r\n" not in buf:
                    data = tls.recv(65536)
                    if not data:
                        return
                    buf += data
                head, _, buf = buf.partition(b"\r\n\r\n")
                path = head.split(b" ", 2)[1]
                if path.startswith(b"/big/"):
                    size = int(path[5:])
                    tls.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % size)
                    while size > 0:
                        tls.sendall(CHUNK[: min(size, len(CHUNK))])
                        size -= len(CHUNK)
                else:
                    tls.sendall(TINY)
                if b"connection: close" in head.lower():
                    return


class _Server(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 1024  # 200 simultaneous connects must not overflow the backlog


def serve(chain: str) -> None:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(chain)
    handler = type("Handler", (_Handler,), {"context": ctx})
    with _Server(("127.0.0.1", 0), handler) as server:
        print(server.server_address[1], flush=True)
        server.serve_forever()


# -- harness ---------------------------------------------------------------------------------
class ProxyLog(logging.Handler):
    """Keeps, per phase, what the proxy and its event loop log (failed connections, TLS
    handshakes that broke, exceptions in loop callbacks) instead of printing each one."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.phase = "setup"
        self.records: list[tuple[str, logging.LogRecord]] = []
        for name in ("nixcell.net", "asyncio"):
            logger = logging.getLogger(name)
            logger.addHandler(self)
            logger.setLevel(logging.INFO)
            logger.propagate = False

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append((self.phase, record))

    def report(self) -> None:
        counts: dict[tuple[str, str], int] = {}
        for phase, record in self.records:
            key = (phase, f"{record.levelname} {record.name}: {record.getMessage()[:90]}")
            counts[key] = counts.get(key, 0) + 1
        print(f"proxy/event-loop log records (INFO and up): {len(self.records)}")
        for (phase, what), count in sorted(counts.items()):
            print(f"  {count:4d} x [{phase}] {what}")
        if examples := [r for _, r in self.records if r.exc_info]:
            print("first traceback:\n" + logging.Formatter().formatException(examples[0].exc_info))


class Bench:
    def __init__(self, port: int, ca_file: Path, python: str, log: ProxyLog) -> None:
        self.port, self.ca_file, self.python, self.log = port, ca_file, python, log
        self.summaries: list[str] = []

    def network(self, audit: str | None = None) -> dict[str, Any]:
        return {
            "allow_hosts": [f"{HOST}:{self.port}"],
            "allow_cidrs": ["127.0.0.1/32"],
            "resolve": {HOST: ["127.0.0.1"]},
            "upstream_ca": [str(self.ca_file)],
            "audit": audit,
        }

    def client(self, proxy: bool, mode: str, n: int, **extra: Any) -> dict[str, Any]:
        audit = extra.pop("audit", None)
        self.log.phase = f"{mode} via proxy" if proxy else f"{mode} direct"
        cfg = {"mode": mode, "n": n, "proxy": proxy, "host": HOST, "port": self.port, **extra}
        if proxy:
            from nixcell import CellSpec, run

            cfg["cafile"] = None
            spec = CellSpec(
                command=["python3", "-c", CLIENT, json.dumps(cfg)],
                packages=["python3"],
                network=self.network(audit),
            )
            res = run(spec, capture_output=True)
            code, out, err = res.exit_code, res.stdout or b"", res.stderr or b""
            if res.network_summary:
                self.summaries.append(f"{mode}: {res.network_summary}")
        else:
            cfg["cafile"] = str(self.ca_file)
            argv = [self.python, "-c", CLIENT, json.dumps(cfg)]
            proc = subprocess.run(argv, capture_output=True, timeout=600)
            code, out, err = proc.returncode, proc.stdout, proc.stderr
        if code != 0:
            where = "cell" if proxy else "host"
            raise RuntimeError(f"{mode} client ({where}) exited {code}:\n{err.decode()[-3000:]}")
        return json.loads(out.decode().strip().splitlines()[-1])


def ms(samples: list[float]) -> float:
    return statistics.median(samples) * 1000


def store_python() -> str:
    """The offline set's python3: the very binary the cell runs, usable on the host too."""
    from nixcell.nix.resolve import resolve

    path = Path(resolve(["python3"], None).env) / "bin" / "python3"
    return str(path) if path.exists() else shutil.which("python3") or sys.executable


def start_upstream(tmp: Path) -> tuple[subprocess.Popen[bytes], int, Path]:
    import trustme

    ca = trustme.CA()
    ca_file, chain = tmp / "upstream-ca.pem", tmp / "upstream-server.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    ca.issue_cert(HOST, "127.0.0.1").private_key_and_cert_chain_pem.write_to_path(str(chain))
    proc = subprocess.Popen(
        [sys.executable, __file__, "--serve", str(chain)], stdout=subprocess.PIPE
    )
    assert proc.stdout is not None
    return proc, int(proc.stdout.readline()), ca_file


def cli_vs_srt(runs: int, tmp: Path) -> tuple[list[float], list[float], list[float] | None, str]:
    """Warm CLI with and without a network, and srt with the same allow list.

    The CLI runs with its bytecode compiled (``./setup`` runs compileall; so does this script),
    as an installed nixcell would: with PYTHONDONTWRITEBYTECODE set and no .pyc files, every run
    would recompile ~25 modules.
    """
    subprocess.run([sys.executable, "-m", "compileall", "-q", str(REPO / "src")], check=True)
    env = dict(os.environ)

    def cli(*flags: str) -> Callable[[], object]:
        argv = [NIXCELL, "run", "-p", "bash", *flags, "--", "true"]
        return lambda: subprocess.run(argv, check=True, capture_output=True, env=env)

    with_net = timed(cli("--allow-host", "api.example.com"), runs)
    no_net = timed(cli(), runs)
    srt, samples = CACHE / "node_modules" / ".bin" / "srt", None
    settings = tmp / "srt-settings.json"
    network = {"allowedDomains": ["api.example.com"], "deniedDomains": []}
    files = {"denyRead": [], "allowWrite": [], "denyWrite": []}
    settings.write_text(json.dumps({"network": network, "filesystem": files}))
    argv = [str(srt), "--settings", str(settings), "true"]
    note = f"srt --settings FILE true, allowedDomains {network['allowedDomains']}"
    if not srt.exists():
        note = f"srt not installed at {srt} (bench_engine.py --install-srt)"
    elif (probe := subprocess.run(argv, capture_output=True)).returncode != 0:
        note = f"srt failed ({probe.returncode}): {probe.stderr.decode()[-500:]}"
    else:
        samples = timed(lambda: subprocess.run(argv, check=True, capture_output=True), runs)
    return with_net, no_net, samples, note


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--serve", metavar="CHAIN", help=argparse.SUPPRESS)
    parser.add_argument("--requests", type=int, default=500, help="keep-alive GETs")
    parser.add_argument("--connections", type=int, default=100, help="new connections, serial")
    parser.add_argument("--concurrency", type=int, default=200)
    parser.add_argument("--downloads", type=int, default=3, help="100 MB downloads per round")
    parser.add_argument("--rounds", type=int, default=5, help="direct/proxy download rounds")
    parser.add_argument("--runs", type=int, default=20, help="CLI and srt runs")
    args = parser.parse_args()
    if args.serve:
        serve(args.serve)
        return
    proxy_log = ProxyLog()
    with tempfile.TemporaryDirectory(prefix="nixcell-bench-net-") as tmp_dir:
        tmp = Path(tmp_dir)
        upstream, port, ca_file = start_upstream(tmp)
        try:
            bench = Bench(port, ca_file, store_python(), proxy_log)
            audit = str(tmp / "audit.jsonl")
            plan = [  # (key, mode, n, extra): each run direct, then via the proxy, in turn
                ("latency", "latency", args.requests, {}),
                ("connect", "connect", args.connections, {}),
                ("mbps", "throughput", args.downloads, {"size": BIG}),
                ("conc", "concurrent", args.concurrency, {"audit": audit}),
            ]
            results: dict[bool, dict[str, Any]] = {False: {}, True: {}}
            for key, mode, n, extra in plan:
                # Downloads alternate direct/proxy over several rounds: the machine's speed
                # drifts (shared cores), and a drift must not land on one side only.
                for _ in range(args.rounds if key == "mbps" else 1):
                    for proxy in (False, True):
                        out = bench.client(proxy, mode, n, **extra)
                        value = out if key == "conc" else out[next(iter(out))]
                        if key == "mbps":
                            results[proxy].setdefault(key, []).extend(value)
                        else:
                            results[proxy][key] = value
            cli, no_net, srt, srt_note = cli_vs_srt(args.runs, tmp)
            audit_lines = Path(audit).read_text().splitlines()
        finally:
            upstream.terminate()
            upstream.wait()
    direct, via = results[False], results[True]
    actions: dict[str, int] = {}
    for line in audit_lines:
        action = json.loads(line)["action"]
        actions[action] = actions.get(action, 0) + 1

    def msq(samples: list[float], q: float) -> float:
        return pct(samples, q) * 1000

    rows = []
    for label, key, q in [
        (f"keep-alive GET p50 ({args.requests} on one connection)", "latency", 0.5),
        ("keep-alive GET p99", "latency", 0.99),
        (f"new connection + GET p50 ({args.connections}, leaf cached)", "connect", 0.5),
        ("new connection + GET p99", "connect", 0.99),
    ]:
        d, p = msq(direct[key], q), msq(via[key], q)
        target = "added ≤ 1 ms" if key == "latency" and q == 0.5 else "-"
        met = ("yes" if p - d <= 1.0 else "no") if target != "-" else "-"
        rows.append((f"{label}, ms", f"{d:.3f}", f"{p:.3f}", f"+{p - d:.3f} ms", target, met))
    d_mb, p_mb = statistics.median(direct["mbps"]), statistics.median(via["mbps"])
    rows.append(
        (
            f"100 MB download, MB/s (median of {args.downloads * args.rounds})",
            f"{d_mb:.0f}",
            f"{p_mb:.0f}",
            f"{p_mb / d_mb:.2f} x",
            "≥ 0.5x direct",
            "yes" if p_mb >= 0.5 * d_mb else "no",
        )
    )
    dc, pc = direct["conc"], via["conc"]
    rows.append(
        (
            f"{args.concurrency} simultaneous connections, ok / errors (wall s)",
            f"{dc['ok']} / {len(dc['errors'])} ({dc['wall']:.2f})",
            f"{pc['ok']} / {len(pc['errors'])} ({pc['wall']:.2f})",
            "-",
            "0 errors",
            "yes" if not pc["errors"] and pc["ok"] == args.concurrency else "no",
        )
    )
    print(
        f"\nloopback HTTPS upstream, {socket.gethostname()}, cores: {len(os.sched_getaffinity(0))}"
    )
    print("\n| measurement | direct | via proxy | proxy vs direct | target | met |")
    print("|---|---|---|---|---|---|")
    for row in rows:
        print("| " + " | ".join(row) + " |")
    cli_ms = ms(cli)
    print(f"\n| command (median of {args.runs}, warm) | ms |\n|---|---|")
    print(f"| nixcell run -p bash --allow-host api.example.com -- true | {cli_ms:.1f} |")
    print(f"| nixcell run -p bash -- true (no network, reference) | {ms(no_net):.1f} |")
    if srt is not None:
        srt_ms = ms(srt)
        print(f"| {srt_note} | {srt_ms:.1f} |")
        verdict = "met" if cli_ms <= 0.4 * srt_ms else "NOT met"
        print(f"\nCLI / srt = {cli_ms / srt_ms:.2f} (target ≤ 0.4: {verdict})")
    else:
        print(f"| srt | {srt_note} |")
    print(f"\nproxy audit of the concurrent cell: {actions or 'no lines'}")
    for errors in (dc["errors"], pc["errors"]):
        for text in sorted(set(errors))[:5]:
            print(f"  client error ({errors.count(text)}x): {text}")
    for summary in bench.summaries:
        print(f"  network summary: {summary}")
    proxy_log.report()


if __name__ == "__main__":
    main()

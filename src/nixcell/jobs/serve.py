"""The ``nixcell serve`` daemon: config, store, service and uvicorn on sockets bound here.

Sockets are bound by this module (uvicorn gets them ready-made), so the unix socket's mode,
group and directory are ours to check: the directory is created without following links and is
writable by nobody else; the socket is 0660 with the configured group. SIGTERM/SIGINT stop the
service (its ``shutdown`` mode), end every stream, close the listeners and remove the socket.
SIGHUP loads the config again; a bad one is logged in one line and the old one kept.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import grp
import logging
import os
import signal
import socket
import stat
from typing import Any

import uvicorn

from nixcell.errors import UsageError
from nixcell.jobs.api import create_app
from nixcell.jobs.auth import PeerProtocol, is_loopback
from nixcell.jobs.config import ServerConfig, default_socket

log = logging.getLogger("nixcell.serve")


def parse_listen(spec: str) -> tuple[str, str | int]:
    """``unix:PATH`` -> ("unix", PATH); ``HOST:PORT`` / ``[V6]:PORT`` -> (host, port)."""
    if spec.startswith("unix:"):
        path = spec[5:]
        if not path.startswith("/") or "\0" in path:
            raise UsageError(f"--listen {spec!r}: a unix socket needs an absolute path")
        return "unix", os.path.normpath(path)
    host, sep, port = spec.rpartition(":")
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise UsageError(f"--listen {spec!r}: write unix:PATH or HOST:PORT (e.g. 127.0.0.1:7878)")
    return host, int(port)


def _check_ancestors(path: str) -> None:
    me = os.geteuid()
    here = os.path.dirname(path)
    while True:
        st = os.lstat(here)
        if st.st_uid not in (0, me) or (st.st_mode & 0o022 and not st.st_mode & stat.S_ISVTX):
            raise UsageError(f"refusing the socket dir {path}: {here} is writable by others")
        if here == "/":
            return
        here = os.path.dirname(here)


def socket_dir(path: str, gid: int | None) -> None:
    """Make (or check) the socket's directory: ours, a real directory, writable by us only."""
    _check_ancestors(path)
    with contextlib.suppress(FileExistsError):
        os.mkdir(path, 0o700)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
    except OSError as exc:
        raise UsageError(f"cannot use the socket dir {path}: {exc.strerror}") from None
    try:
        st = os.fstat(fd)
        if st.st_uid != os.geteuid():
            raise UsageError(f"refusing the socket dir {path}: owned by uid {st.st_uid}")
        if gid is not None:
            os.fchown(fd, -1, gid)
        os.fchmod(fd, 0o750 if gid is not None else 0o755)
    finally:
        os.close(fd)


def bind_unix(path: str, group: str | None) -> socket.socket:
    gid = None
    if group:
        try:
            gid = grp.getgrnam(group).gr_gid
        except KeyError:
            raise UsageError(f"socket_group {group!r}: no such group") from None
    socket_dir(os.path.dirname(path), gid)
    _clear_stale(path)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old = os.umask(0o117)  # the socket is made 0660 (single-threaded here: no one else sees it)
    try:
        sock.bind(path)
    finally:
        os.umask(old)
    if gid is not None:
        os.chown(path, -1, gid, follow_symlinks=False)
    sock.listen(128)
    sock.setblocking(False)
    return sock


def _clear_stale(path: str) -> None:
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(st.st_mode):
        raise UsageError(f"refusing to listen on {path}: something else is there")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.connect(path)
    except OSError as exc:
        if exc.errno != errno.ECONNREFUSED:
            raise UsageError(f"cannot listen on {path}: {exc.strerror}") from None
        os.unlink(path)  # a dead daemon's socket
    else:
        raise UsageError(f"another daemon listens on {path}")
    finally:
        probe.close()


def bind_tcp(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise UsageError(f"cannot listen on {host}:{port}: {exc.strerror}") from None
    sock.listen(128)
    sock.setblocking(False)
    if not is_loopback(host):
        log.warning(
            "WARNING: listening on %s:%d, which is NOT loopback: anyone who can reach it may try "
            "tokens; prefer a unix socket or 127.0.0.1",
            host,
            port,
        )
    return sock


class _Server(uvicorn.Server):
    """uvicorn without its own signal handlers: the daemon's come first (stop the service)."""

    @contextlib.contextmanager
    def capture_signals(self):  # type: ignore[override]
        yield


class Daemon:
    def __init__(self, config_path: str | None, overrides: dict[str, Any]) -> None:
        from nixcell.jobs.config import load_config

        self.config_path = config_path
        self.overrides = overrides
        self.config = load_config(config_path, overrides=overrides)
        self.sockets: list[tuple[socket.socket, str | None, tuple[int, int] | None]] = []
        self._stopping = False

    def bind(self) -> None:
        listens = tuple(self.config.listen) or (f"unix:{default_socket()}",)
        for spec in listens:
            host, port = parse_listen(spec)
            if host == "unix":
                path = str(port)
                sock = bind_unix(path, getattr(self.config, "socket_group", None))
                st = os.lstat(path)
                self.sockets.append((sock, path, (st.st_dev, st.st_ino)))
                log.info("listening on unix:%s", path)
            else:
                self.sockets.append((bind_tcp(host, int(port)), None, None))
                log.info("listening on %s:%s", host, port)

    async def run(self) -> int:
        from nixcell.fsio import private_dir
        from nixcell.jobs.service import JobService
        from nixcell.jobs.stores import open_store

        private_dir(self.config.state_dir)
        apply_nix_settings(self.config)
        store = await asyncio.to_thread(open_store, self.config)
        service = JobService(self.config, store)
        self.service = service
        await service.start()
        try:
            app = create_app(service, lambda: self.config)
            self.api = app.state.api
            server = _Server(
                uvicorn.Config(
                    app,
                    http=PeerProtocol,
                    lifespan="off",
                    log_config=None,
                    access_log=False,
                    timeout_graceful_shutdown=5,
                    ws_max_size=1 << 20,  # one attach frame (keys, a paste): bounded memory
                )
            )
            self.server = server
            loop = asyncio.get_running_loop()
            for signum in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(signum, self._terminate, signum)
            loop.add_signal_handler(signal.SIGHUP, self._reload)
            log.info("serving (pid %d)", os.getpid())
            await server.serve(sockets=[s for s, _, _ in self.sockets])
        finally:
            if not self._stopping:
                await service.stop()
            store.close()
            self.close()
        log.info("stopped")
        return 0

    def _terminate(self, signum: int) -> None:
        if self._stopping:
            return
        self._stopping = True
        log.info("%s: stopping", signal.Signals(signum).name)
        asyncio.get_running_loop().create_task(self._stop())

    async def _stop(self) -> None:
        try:
            await self.service.stop()
        except Exception:
            log.exception("the service did not stop cleanly")
        from nixcell.jobs.attach_api import settle

        await settle(3.0)
        self.api.closing.set()
        self.server.should_exit = True

    def _reload(self) -> None:
        from nixcell.errors import NixcellError
        from nixcell.jobs.config import load_config

        try:
            config = load_config(self.config_path, overrides=self.overrides)
            for key in ("nix_root",):  # (the store every cell binds from stays)
                if getattr(config, key) != getattr(self.config, key):
                    raise UsageError(f"{key} changes only at a restart")
            apply_nix_settings(config)  # (a revoked key is not trusted by the next job)
            self.service.reload(config)
        except NixcellError as exc:
            log.error("SIGHUP: config not reloaded, the old one stays: %s", exc.message)
            return
        if tuple(config.listen) != tuple(self.config.listen):
            log.warning("SIGHUP: listen changes apply at the next start")
        self.config = config
        log.info("SIGHUP: config reloaded")

    def close(self) -> None:
        for sock, path, ident in self.sockets:
            sock.close()
            if path is None:
                continue
            with contextlib.suppress(OSError):
                st = os.lstat(path)
                if (st.st_dev, st.st_ino) == ident:
                    os.unlink(path)
        self.sockets = []


def serve(
    config_path: str | None,
    listens: tuple[str, ...],
    state_dir: str | None,
    *,
    store: str | None = None,
    host_name: str | None = None,
) -> int:
    overrides: dict[str, Any] = {"store": store, "host_name": host_name}
    if listens:
        overrides["listen"] = tuple(listens)
    if state_dir:
        overrides["state_dir"] = os.path.abspath(state_dir)
    daemon = Daemon(config_path, overrides)
    daemon.bind()
    try:
        return asyncio.run(daemon.run())
    finally:
        daemon.close()


def apply_nix_settings(config: ServerConfig) -> None:
    """The engine's nix calls read the host's Nix root and binary caches from the environment
    (``nix.storeroot``, ``nix.resolve.nix_options``): set them, or clear them, for this config."""
    from nixcell.nix.storeroot import ENV, check_root

    settings = {
        ENV: check_root(config.nix_root) if config.nix_root else "",
        "NIXCELL_SUBSTITUTERS": " ".join(config.substituters),
        "NIXCELL_TRUSTED_PUBLIC_KEYS": " ".join(config.trusted_public_keys),
    }
    for name, value in settings.items():
        if value:
            os.environ[name] = value
        else:
            os.environ.pop(name, None)

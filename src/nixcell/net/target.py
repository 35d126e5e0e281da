"""Where a proxied request goes: its target parsed, normalised and checked against the tunnel.

The path here is the normalised one (net/urlpath.py): what the policy checks is what is sent.
A ``Host`` header that names another authority than the request target (absolute-form, CONNECT
or the tunnel's) is a FramingError (400): upstreams route by one, the policy checked the other.
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import urlsplit

import h11

from nixcell.net.framing import FramingError
from nixcell.net.h11io import Headers, header
from nixcell.net.hosts import BadHost, normalize_host
from nixcell.net.urlpath import normalize_path

DEFAULT_PORTS = {"http": 80, "https": 443, "ws": 80, "wss": 443}


@dataclass
class Target:
    scheme: str
    host: str
    port: int
    path: str
    query: str = ""
    error: str | None = None  # set when the request must be refused before any policy

    @classmethod
    def from_absolute(cls, raw: bytes) -> Target | None:
        """``GET http://host/path`` sent to the proxy; None for origin-form targets."""
        text = raw.decode("ascii", errors="replace")
        if text.startswith("/") or "://" not in text:
            return None
        try:
            parts = urlsplit(text)
        except ValueError:
            return cls("http", "-", 0, text[:200], error="unparsable URL")
        scheme = parts.scheme.lower()
        if scheme not in DEFAULT_PORTS:
            return cls(scheme or "-", "-", 0, text[:200], error=f"scheme {scheme!r} not proxied")
        scheme = {"ws": "http", "wss": "https"}.get(scheme, scheme)
        return cls._build(scheme, parts.netloc, parts.path, parts.query)

    @classmethod
    def _build(cls, scheme: str, netloc: str, path: str, query: str) -> Target:
        if "@" in netloc:
            return cls(scheme, "-", 0, path, error="credentials in the URL authority")
        host_text, port = _split_netloc(netloc, DEFAULT_PORTS[scheme])
        try:
            host = normalize_host(host_text)
        except BadHost as exc:
            return cls(scheme, host_text[:100] or "-", port or 0, path, error=str(exc))
        if port is None:
            return cls(scheme, host, 0, path, error="bad port")
        try:
            norm = normalize_path(path or "/")
        except ValueError as exc:
            return cls(scheme, host, port, path[:200], error=f"bad path: {exc}")
        return cls(scheme, host, port, norm, query)

    @classmethod
    def in_tunnel(cls, host: str, port: int, req: h11.Request, sni: str) -> Target:
        """A request inside a CONNECT tunnel: it may only address the tunnel's own host."""
        text = req.target.decode("ascii", errors="replace")
        if text.startswith("/") or text == "*":
            path, _, query = text.partition("?")
            target = cls._build("https", netloc(host, port), path.split("#")[0], query)
        else:
            target = cls.from_absolute(req.target) or cls(
                "https", host, port, text[:200], error="bad request target"
            )
            target.scheme = "https"
        if target.error:
            return target
        if (target.host, target.port) != (host, port):
            target.error = f"request for {target.host}:{target.port} inside a tunnel to {host}"
            return target
        target.check_host_header(req.headers)
        if sni:
            try:
                sni_ok = normalize_host(sni) == host
            except BadHost:
                sni_ok = False
            if not sni_ok:
                target.error = f"TLS server name {sni!r} ≠ tunnel host {host}"
        return target

    def check_host_header(self, headers: Headers) -> None:
        """Raise FramingError when ``Host`` names another authority than this target."""
        if self.error is None:
            default = DEFAULT_PORTS[self.scheme]
            why = host_header_mismatch(headers, self.host, self.port, default)
            if why is not None:
                raise FramingError(why)

    def url_path(self) -> bytes:
        return (self.path + (f"?{self.query}" if self.query else "")).encode()


def host_header_mismatch(
    headers: Headers, host: str, port: int, default: int = 443
) -> str | None:
    """Why the ``Host`` header does not name ``host:port`` (None: it does, or is absent); a
    Host without a port means ``default``, the scheme's port (RFC 9110 §7.2)."""
    value = header(headers, b"host")
    if value is None:
        return None
    text = value.decode("ascii", "replace")
    h_text, h_port = _split_netloc(text, default)
    try:
        same = "@" not in text and (normalize_host(h_text), h_port) == (host, port)
    except BadHost:
        same = False
    return None if same else f"Host header {text[:100]!r} is not {netloc(host, port)}"


def netloc(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _split_netloc(netloc: str, default: int) -> tuple[str, int | None]:
    if netloc.startswith("["):
        end = netloc.find("]")
        host, rest = netloc[1:end], netloc[end + 1 :]
    else:
        host, sep, port_text = netloc.rpartition(":")
        if not sep:
            return netloc, default
        rest = ":" + port_text
    if not rest:
        return host, default
    digits = rest[1:]
    if not rest.startswith(":") or not digits.isdigit() or not 0 < int(digits) < 65536:
        return host, None
    return host, int(digits)

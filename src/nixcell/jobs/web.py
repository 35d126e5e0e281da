"""The job service's web page: a job list and a job page, static files from the package.

The pages are fixed files (no templating: nothing job-derived is ever put into HTML on the
server); the browser fills them from the JSON API with ``textContent``. Every answer carries a
strict Content-Security-Policy — only this origin's own files, no inline script or style,
Trusted Types enforced so that even an accidental ``innerHTML`` throws instead of parsing — and
the files are served from a fixed table, so no request path ever reaches the filesystem.
"""

from __future__ import annotations

from importlib import resources

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

CSP = "; ".join(
    (
        "default-src 'self'",
        "script-src 'self'",
        "style-src 'self'",
        "img-src 'self'",
        "connect-src 'self'",
        "font-src 'none'",
        "object-src 'none'",
        "base-uri 'none'",
        "form-action 'none'",  # the login form is sent by fetch(), never by the browser
        "frame-ancestors 'none'",
        "require-trusted-types-for 'script'",
        "trusted-types 'none'",
    )
)

SECURITY_HEADERS: dict[str, str] = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
    "Cross-Origin-Opener-Policy": "same-origin",
    "Cross-Origin-Resource-Policy": "same-origin",
    "Cache-Control": "no-store",
}

# name -> content type: the only files there are (a name not here is a 404, whatever its path).
STATIC: dict[str, str] = {
    "index.html": "text/html; charset=utf-8",  # both views: the list and one job (app.js)
    "util.js": "text/javascript; charset=utf-8",  # the scripts, in their loading order
    "list.js": "text/javascript; charset=utf-8",
    "job.js": "text/javascript; charset=utf-8",
    "app.js": "text/javascript; charset=utf-8",
    "style.css": "text/css; charset=utf-8",
}


def _file(name: str) -> bytes:
    """A page file's bytes, read from the installed package each time (they are small)."""
    return resources.files("nixcell.jobs").joinpath("web", name).read_bytes()


def page_response(name: str) -> Response:
    """One of the package's web files with the security headers."""
    return Response(_file(name), media_type=STATIC[name], headers=SECURITY_HEADERS)


def not_found() -> Response:
    return Response(
        b'{"error": "not found"}', status_code=404, media_type="application/json",
        headers=SECURITY_HEADERS,
    )  # fmt: skip


async def _index(request: Request) -> Response:
    # /jobs/ID too: the id only selects the view; the API answers 404 for a job the caller
    # may not see, so the page confirms nothing.
    return page_response("index.html")


async def _static(request: Request) -> Response:
    name = request.path_params["name"]
    return page_response(name) if name in STATIC else not_found()


def web_routes() -> list[BaseRoute]:
    """The page's routes, for the API's starlette app: ``/``, ``/jobs/{id}``, ``/static/NAME``.

    They hold no data, so they need no caller: the page asks the API, which checks one (on TCP
    the page shows its token form when the API answers 401)."""
    return [
        Route("/", _index, methods=["GET", "HEAD"]),
        Route("/jobs/{job_id:int}", _index, methods=["GET", "HEAD"]),
        Route("/static/{name}", _static, methods=["GET", "HEAD"]),
    ]

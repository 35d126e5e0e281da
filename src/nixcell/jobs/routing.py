"""Which host a job may run on, and the closure hint (pure; shared by the stores and the service).

``target``: a job submitted with ``on_host`` waits for that host; others go to any host.
``closure_key``: jobs asking for the same packages from the same pin need the same closure, so
a host that realised it lately is preferred for them (a hint, not a promise: any host takes the
job once it has waited ``closure_hint`` seconds).
"""

from __future__ import annotations

import hashlib
import json
from typing import Any


def target(request: dict[str, Any]) -> str | None:
    value = request.get("on_host")
    return value if isinstance(value, str) and value else None


def retries(request: dict[str, Any]) -> int:
    value = request.get("retry", 0)
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else 0


def closure_key(request: dict[str, Any]) -> str:
    """A short digest of what decides a job's closure (packages, profiles, pin, flake shell)."""
    workspace = request.get("workspace") or {}
    what = {
        "packages": sorted(str(p) for p in request.get("packages") or ()),
        "profiles": [str(p) for p in request.get("profiles") or ()],
        "nixpkgs": request.get("nixpkgs"),
        "flake": workspace.get("repo") if workspace.get("flake_shell") else None,
    }
    blob = json.dumps(what, sort_keys=True, separators=(",", ":")).encode()
    return hashlib.sha256(blob).hexdigest()[:24]

"""``/metrics``: the job service's numbers in the Prometheus text format (version 0.0.4).

Pure: the service gathers the numbers (store counts, its queue, proxy audit tallies) and this
module only writes them out, so the format is tested without a daemon. Written by hand rather
than with ``prometheus_client``: the daemon needs one function, not a registry and its globals.

``nixcell_job_duration_seconds`` is a histogram over the durations it is given — the store's
recent finished jobs (``JobStore.durations``), so it describes a window, not the process's life.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping

from nixcell.jobs.model import STATES, TERMINAL

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
BUCKETS: tuple[float, ...] = (0.1, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 900, 1800, 3600, 14400)
DECISIONS: tuple[str, ...] = ("allow", "deny")  # always written, zeros included


def render(
    counts: Mapping[str, int],
    queue_length: int,
    durations: Iterable[tuple[str, float]],
    proxy: Mapping[str, int],
    running: int,
) -> str:
    """The metrics page. ``counts``: jobs per state; ``queue_length``: jobs waiting for a
    slot; ``durations``: (terminal state, seconds) of finished jobs; ``proxy``: policy
    decisions by kind (``allow``/``deny``); ``running``: cells this daemon runs now."""
    out: list[str] = []
    _family(out, "nixcell_jobs", "gauge", "Jobs in the store by state.")
    for state in (*STATES, *sorted(set(counts) - set(STATES))):
        out.append(f"nixcell_jobs{_labels(state=state)} {_int(counts.get(state, 0))}")
    _family(out, "nixcell_queue_length", "gauge", "Jobs queued and waiting for a slot.")
    out.append(f"nixcell_queue_length {_int(queue_length)}")
    _family(out, "nixcell_jobs_running", "gauge", "Cells of jobs this daemon runs now.")
    out.append(f"nixcell_jobs_running {_int(running)}")
    _histogram(out, durations)
    _family(
        out,
        "nixcell_proxy_decisions_total",
        "counter",
        "Network policy decisions of job cells' proxies.",
    )
    for decision in (*DECISIONS, *sorted(set(proxy) - set(DECISIONS))):
        value = _int(proxy.get(decision, 0))
        out.append(f"nixcell_proxy_decisions_total{_labels(decision=decision)} {value}")
    return "\n".join(out) + "\n"


def _histogram(out: list[str], durations: Iterable[tuple[str, float]]) -> None:
    name = "nixcell_job_duration_seconds"
    _family(out, name, "histogram", "Time from running to finished of recent finished jobs.")
    by_state: dict[str, list[float]] = {state: [] for state in STATES if state in TERMINAL}
    for state, seconds in durations:
        if isinstance(seconds, (int, float)) and math.isfinite(seconds):
            by_state.setdefault(state, []).append(max(0.0, float(seconds)))
    for state, values in by_state.items():
        for bound in BUCKETS:
            n = sum(1 for v in values if v <= bound)
            out.append(f"{name}_bucket{_labels(state=state, le=_float(bound))} {n}")
        out.append(f"{name}_bucket{_labels(state=state, le='+Inf')} {len(values)}")
        out.append(f"{name}_sum{_labels(state=state)} {_float(sum(values))}")
        out.append(f"{name}_count{_labels(state=state)} {len(values)}")


def _family(out: list[str], name: str, kind: str, help_text: str) -> None:
    out.append(f"# HELP {name} {help_text}")
    out.append(f"# TYPE {name} {kind}")


def _labels(**labels: str) -> str:
    """``{k="v",…}`` with the format's escapes (backslash, quote, newline), so a label value
    can never end the line or forge another sample."""
    body = ",".join(f'{k}="{_escape(str(v))}"' for k, v in labels.items())
    return "{" + body + "}"


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _int(value: object) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else 0


def _float(value: float) -> str:
    return repr(float(value))

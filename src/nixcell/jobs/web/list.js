// nixcell jobs web page: the job list view (util.js before it).
"use strict";

// ---- the job list ----------------------------------------------------------------------------

const rows = new Map(); // id -> {job, fetchedAt, tr}
const refreshing = new Map(); // id -> true while a GET is in flight, "again" if asked meanwhile

function stateMatches(state) {
  const wanted = $("state-filter").value;
  if (!wanted) return true;
  if (wanted === "active") return !TERMINAL.has(state);
  return state === wanted;
}

function renderRow(entry) {
  const job = entry.job;
  const tr = entry.tr || document.createElement("tr");
  tr.replaceChildren();
  tr.dataset.id = String(job.id);
  tr.dataset.state = String(job.state);
  const idCell = el("td", "num");
  const link = el("a", null, `#${job.id}`);
  link.href = `/jobs/${encodeURIComponent(job.id)}`;
  idCell.append(link);
  const stateCell = el("td", `state state-${job.state}`, job.state);
  if (job.exit_code !== null && job.exit_code !== undefined && job.state === "failed") {
    stateCell.append(el("span", "muted", ` (${job.exit_code})`));
  }
  if (job.reason) stateCell.title = visible(job.reason);
  const label = jobLabel(job);
  const cmd = el("td", "cmd", label);
  cmd.title = visible(label);
  const dur = el("td", "num duration", formatDuration(currentDuration(entry)));
  tr.append(idCell, stateCell, el("td", "owner", job.owner), cmd, dur);
  tr.hidden = !stateMatches(job.state);
  entry.tr = tr;
  return tr;
}

function placeRow(entry) {
  const body = $("jobs");
  const id = Number(entry.job.id);
  if (!entry.tr.isConnected) {
    let before = null;
    for (const other of body.children) {
      if (Number(other.dataset.id) < id) {
        before = other;
        break;
      }
    }
    body.insertBefore(entry.tr, before); // newest first
  }
  updateCount();
}

function updateCount() {
  const shown = [...rows.values()].filter((e) => !e.tr.hidden).length;
  $("count").textContent = `${shown} job${shown === 1 ? "" : "s"}`;
  $("empty").hidden = rows.size > 0;
}

function upsert(job) {
  const key = Number(job.id);
  const entry = rows.get(key) || { job, fetchedAt: 0, tr: null };
  entry.job = job;
  entry.fetchedAt = performance.now();
  rows.set(key, entry);
  renderRow(entry);
  placeRow(entry);
}

async function refreshJob(id) {
  if (refreshing.has(id)) {
    refreshing.set(id, "again");
    return;
  }
  refreshing.set(id, true);
  try {
    for (;;) {
      try {
        const data = await api(`/jobs/${encodeURIComponent(id)}`);
        upsert(data.job);
      } catch (err) {
        if (err instanceof ApiError && err.status === 404) {
          const entry = rows.get(id);
          if (entry) entry.tr.remove();
          rows.delete(id);
          updateCount();
        } else {
          showError(err.message);
        }
      }
      if (refreshing.get(id) !== "again") break;
      refreshing.set(id, true);
    }
  } finally {
    refreshing.delete(id);
  }
}

async function loadList() {
  const data = await api("/jobs?limit=200&all=1");
  const seen = new Set();
  for (const job of data.jobs) {
    seen.add(Number(job.id));
    upsert(job);
  }
  for (const [id, entry] of rows) {
    if (!seen.has(id) && !TERMINAL.has(entry.job.state)) refreshJob(id);
  }
}

function onListEvent(event) {
  const id = Number(event.job);
  if (!Number.isSafeInteger(id)) return;
  const entry = rows.get(id);
  if (entry && typeof event.state === "string") {
    // Show the new state at once; the GET below brings duration, exit code and reason.
    entry.job = { ...entry.job, state: event.state };
    renderRow(entry);
  }
  refreshJob(id);
}

async function startList() {
  await loadList();
  $("state-filter").addEventListener("change", () => {
    for (const entry of rows.values()) entry.tr.hidden = !stateMatches(entry.job.state);
    updateCount();
  });
  const open = () =>
    liveStream(
      `${API}/events`,
      {
        state: onListEvent,
        message: onListEvent,
        closed: () => {
          setLive("live updates stopped; retrying in 5 s");
          const retry = () =>
            setTimeout(() => {
              loadList().then(
                () => {
                  showError("");
                  open();
                },
                (err) => {
                  showError(err.message);
                  retry();
                },
              );
            }, 5000);
          retry();
        },
      },
      // On every open, the first too: a job made between the first GET and the stream's
      // subscription would be in neither (seen in CI: a running job never listed).
      () => loadList().catch((err) => showError(err.message)),
    );
  open();
  setInterval(() => {
    for (const entry of rows.values()) {
      if (!TERMINAL.has(entry.job.state) && entry.job.duration !== null) {
        entry.tr.querySelector(".duration").textContent = formatDuration(currentDuration(entry));
      }
    }
  }, 500);
}

// nixcell jobs web page: plain JS, no build step, no dependencies.
//
// Every job-derived string reaches the DOM through textContent (never innerHTML, which the
// page's Trusted Types policy would refuse anyway). State-changing requests carry the
// X-Nixcell header, which a cross-site form cannot send.
"use strict";

const API = "/api/v1";
const TERMINAL = new Set(["succeeded", "failed", "cancelled", "timed_out", "error"]);
const STREAMS = ["stdout", "stderr", "proxy", "system"];

// ---- small helpers -------------------------------------------------------------------------

class ApiError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

async function api(path, options = {}) {
  const headers = { "X-Nixcell": "1", Accept: "application/json" };
  if (options.body !== undefined) headers["Content-Type"] = "application/json";
  const response = await fetch(API + path, {
    method: options.method || "GET",
    headers,
    body: options.body === undefined ? undefined : JSON.stringify(options.body),
    credentials: "same-origin",
    cache: "no-store",
  });
  let data = null;
  try {
    data = await response.json();
  } catch (_) {
    data = null;
  }
  if (!response.ok) {
    const message = data && typeof data.error === "string" ? data.error : `HTTP ${response.status}`;
    throw new ApiError(response.status, message);
  }
  return data;
}

// Control characters (a terminal escape, a CR that would fake another line) and bidi overrides
// are shown escaped (\x1b, \u202e), so a line can neither hide text nor look like another one.
const INVISIBLE = /[\u0000-\u0008\u000b-\u001f\u007f-\u009f\u200e\u200f\u202a-\u202e\u2066-\u2069]/g;
function visible(text) {
  return String(text).replace(INVISIBLE, (c) => {
    const code = c.charCodeAt(0);
    return code < 0x100 ? `\\x${code.toString(16).padStart(2, "0")}` : `\\u${code.toString(16)}`;
  });
}

function el(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined && text !== null) node.textContent = visible(text);
  return node;
}

function $(id) {
  return document.getElementById(id);
}

function showError(message) {
  const box = $("error");
  box.textContent = message ? visible(message) : "";
  box.hidden = !message;
}

function setLive(message) {
  const box = $("live");
  box.textContent = message || "";
  box.hidden = !message;
}

function formatDuration(seconds) {
  if (seconds === null || seconds === undefined || !isFinite(seconds)) return "";
  if (seconds < 0) seconds = 0;
  if (seconds < 60) return `${seconds.toFixed(1)} s`;
  const s = Math.floor(seconds);
  if (s < 3600) return `${Math.floor(s / 60)} m ${String(s % 60).padStart(2, "0")} s`;
  return `${Math.floor(s / 3600)} h ${String(Math.floor((s % 3600) / 60)).padStart(2, "0")} m`;
}

function formatTime(t) {
  if (t === null || t === undefined) return "";
  const d = typeof t === "number" ? new Date(t * 1000) : new Date(String(t)); // unix or ISO
  return isNaN(d.getTime()) ? String(t) : d.toLocaleString();
}

function jobLabel(job) {
  const req = job.request || {};
  if (job.name) return String(job.name);
  if (Array.isArray(req.command) && req.command.length) return req.command.map(String).join(" ");
  if (typeof req.script === "string") {
    const first = req.script.split("\n").find((l) => l.trim() && !l.startsWith("#!")) || "";
    return `script: ${first.trim()}`;
  }
  return "";
}

// A running job's duration keeps ticking from the server's figure and the local clock since it
// was fetched (so a skewed browser clock does not matter).
function currentDuration(entry) {
  const job = entry.job;
  if (job.duration === null || job.duration === undefined) return null;
  if (TERMINAL.has(job.state) || job.state === "queued") return job.duration;
  return job.duration + (performance.now() - entry.fetchedAt) / 1000;
}

// ---- sign-in ---------------------------------------------------------------------------------

// Resolves with the caller once the API accepts us; on TCP without a session shows the form.
async function signIn() {
  try {
    return await api("/whoami");
  } catch (err) {
    if (!(err instanceof ApiError) || err.status !== 401) throw err;
  }
  const form = $("login");
  form.hidden = false;
  $("token").focus();
  return new Promise((resolve) => {
    form.addEventListener("submit", async (event) => {
      event.preventDefault();
      showError("");
      const token = $("token").value;
      try {
        await api("/session", { method: "POST", body: { token } });
        $("token").value = "";
        form.hidden = true;
        resolve(await api("/whoami"));
      } catch (err) {
        showError(err.message);
      }
    });
  });
}

function showCaller(who) {
  if (who && who.caller) $("whoami").textContent = visible(`${who.caller}${who.admin ? " (admin)" : ""}`);
}

// An EventSource that tells the user when it drops and says so when it is back.
function liveStream(url, handlers, onReopen) {
  let opened = false;
  const source = new EventSource(url);
  source.addEventListener("open", () => {
    setLive("");
    if (opened && onReopen) onReopen();
    opened = true;
  });
  source.addEventListener("error", (event) => {
    if (typeof event.data === "string") {
      // The server's own last frame ("event: error"): a refusal, not a dropped connection.
      let message = "the live stream failed";
      try {
        message = JSON.parse(event.data).error || message;
      } catch (_) {
        /* keep the generic message */
      }
      source.close();
      showError(message);
      if (handlers.closed) handlers.closed();
      return;
    }
    if (source.readyState === EventSource.CLOSED) {
      if (handlers.closed) handlers.closed();
    } else {
      setLive("live updates interrupted, reconnecting…");
    }
  });
  for (const [name, fn] of Object.entries(handlers)) {
    if (name === "closed") continue;
    source.addEventListener(name, (event) => {
      let data;
      try {
        data = JSON.parse(event.data);
      } catch (_) {
        return;
      }
      fn(data);
    });
  }
  return source;
}

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

// ---- one job ---------------------------------------------------------------------------------

const jobView = { id: null, entry: null, lastSeq: 0, done: false, source: null };

function field(list, name, value) {
  if (value === null || value === undefined || value === "") return;
  if (Array.isArray(value)) {
    if (!value.length) return;
    value = value.map(String).join(" ");
  } else if (typeof value === "object") {
    const pairs = Object.entries(value);
    if (!pairs.length) return;
    value = pairs.map(([k, v]) => `${k}=${v}`).join("\n");
  }
  const dt = el("dt", null, name);
  const dd = el("dd", null, value);
  dd.dataset.field = name;
  list.append(dt, dd);
}

// The request fields the job view shows, in order (label, JobRequest key).
const REQUEST_FIELDS = [
  ["command", "command"], ["script", "script"], ["packages", "packages"],
  ["allowed hosts", "allow_hosts"], ["denied hosts", "deny_hosts"], ["policies", "policies"],
  ["credentials", "credentials"], ["env", "env"], ["profiles", "profiles"], ["backend", "backend"],
];

function renderJob() {
  const job = jobView.entry.job;
  const req = job.request || {};
  const list = $("fields");
  list.replaceChildren();
  $("title").textContent = visible(` / #${job.id}${job.name ? " " + job.name : ""}`);
  document.title = `nixcell job ${job.id}`;
  const state = el("dd", `state state-${job.state}`, job.state);
  state.id = "state";
  list.append(el("dt", null, "state"), state);
  field(list, "reason", job.reason);
  field(list, "exit code", job.exit_code);
  field(list, "owner", job.owner);
  for (const [label, key] of REQUEST_FIELDS) field(list, label, req[key]);
  const ws = req.workspace || {};
  field(list, "repository", ws.repo ? `${ws.repo}${ws.ref ? " @ " + ws.ref : ""}${ws.path ? " : " + ws.path : ""}` : null);
  field(list, "created", formatTime(job.created));
  field(list, "started", formatTime(job.started));
  field(list, "finished", formatTime(job.finished));
  const dur = el("dd", "duration", formatDuration(currentDuration(jobView.entry)));
  dur.id = "duration";
  list.append(el("dt", null, "duration"), dur);
  field(list, "log lines", `${job.log_lines}${job.log_truncated ? " (truncated)" : ""}`);
  $("cancel").hidden = TERMINAL.has(job.state);
  $("log-note").textContent = job.log_truncated ? "(truncated: the oldest lines were dropped)" : "";
}

async function reloadJob() {
  const data = await api(`/jobs/${jobView.id}`);
  jobView.entry = { job: data.job, fetchedAt: performance.now() };
  renderJob();
  return data.job;
}

function lineHidden(text) {
  const q = $("log-search").value;
  return q !== "" && !text.includes(visible(q));
}

function appendLines(lines) {
  const log = $("log");
  const atBottom = log.scrollHeight - log.scrollTop - log.clientHeight < 24;
  const frag = document.createDocumentFragment();
  for (const line of lines) {
    const seq = Number(line.seq);
    if (!(seq > jobView.lastSeq)) continue; // already shown (a resumed stream)
    jobView.lastSeq = seq;
    const stream = STREAMS.includes(line.stream) ? line.stream : "system";
    const row = el("div", `line stream-${stream}`);
    row.dataset.seq = String(seq);
    row.append(el("span", "seq", seq), el("span", "text", line.text));
    row.title = `${stream} ${formatTime(line.time)}`;
    row.hidden = lineHidden(visible(line.text));
    frag.append(row);
  }
  log.append(frag);
  if (atBottom && $("follow-scroll").checked) log.scrollTop = log.scrollHeight;
}

function onLogState(event) {
  if (typeof event.state !== "string") return;
  jobView.entry.job = { ...jobView.entry.job, state: event.state };
  if ("exit_code" in event) jobView.entry.job.exit_code = event.exit_code;
  renderJob();
  if (TERMINAL.has(event.state)) {
    jobView.done = true;
    if (jobView.source) jobView.source.close(); // the server ends the stream; do not reconnect
    setLive("");
    reloadJob().catch((err) => showError(err.message));
    loadAudit().catch((err) => showError(err.message));
  }
}

function followLogs() {
  jobView.source = liveStream(`${API}/jobs/${jobView.id}/logs?follow=1`, {
    log: (line) => appendLines([line]),
    state: onLogState,
    closed: () => {
      if (jobView.done) return;
      // Refused (401/404) or the daemon went away: say what the API says now.
      reloadJob().then(
        (job) => {
          if (!TERMINAL.has(job.state)) setLive("log stream closed; reload the page to resume");
        },
        (err) => showError(err.message),
      );
    },
  });
}

async function loadAudit() {
  const data = await api(`/jobs/${jobView.id}/audit`);
  const body = $("audit");
  body.replaceChildren();
  const known = ["time", "decision", "method", "host", "path", "rule"];
  for (const d of data.decisions || []) {
    const tr = document.createElement("tr");
    tr.append(
      el("td", "num", formatTime(d.time)),
      el("td", `decision-${String(d.decision)}`, d.decision),
      el("td", null, d.method),
      el("td", null, d.host),
      el("td", "cmd", d.path),
      el("td", null, d.rule),
    );
    const rest = Object.entries(d).filter(([k]) => !known.includes(k));
    tr.append(el("td", "muted", rest.map(([k, v]) => `${k}=${typeof v === "object" ? JSON.stringify(v) : v}`).join(" ")));
    body.append(tr);
  }
  $("audit-empty").hidden = body.children.length > 0;
}

async function cancelJob() {
  const button = $("cancel");
  button.disabled = true;
  showError("");
  try {
    const data = await api(`/jobs/${jobView.id}/cancel`, { method: "POST" });
    jobView.entry = { job: data.job, fetchedAt: performance.now() };
    renderJob();
  } catch (err) {
    showError(err.message);
  } finally {
    button.disabled = false;
  }
}

async function startJob(id) {
  jobView.id = id;
  await reloadJob();
  for (const stream of STREAMS) {
    $(`show-${stream}`).addEventListener("change", (e) => $("log").classList.toggle(`hide-${stream}`, !e.target.checked));
  }
  $("log-search").addEventListener("input", () => {
    for (const row of $("log").children) row.hidden = lineHidden(row.querySelector(".text").textContent);
  });
  $("cancel").addEventListener("click", cancelJob);
  $("audit-refresh").addEventListener("click", () => loadAudit().catch((err) => showError(err.message)));
  followLogs();
  loadAudit().catch((err) => showError(err.message));
  setInterval(() => {
    if (jobView.entry && !TERMINAL.has(jobView.entry.job.state)) {
      $("duration").textContent = formatDuration(currentDuration(jobView.entry));
    }
  }, 500);
}

// ---- start -----------------------------------------------------------------------------------

// One page, two views: /jobs/ID shows a job, anything else the list.
const JOB_PATH = /^\/jobs\/([0-9]{1,18})$/;

async function main() {
  const who = await signIn();
  showCaller(who);
  const match = JOB_PATH.exec(location.pathname);
  $(match ? "job-view" : "list-view").hidden = false;
  if (match) await startJob(Number(match[1]));
  else await startList();
}

main().catch((err) => showError(err.message || String(err)));

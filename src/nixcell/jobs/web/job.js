// nixcell jobs web page: the one-job view (util.js before it).
"use strict";

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

// nixcell jobs web page, shared pieces: the API, text that stays text, live streams,
// sign-in. Plain JS, no build step, no dependencies; loaded first (see index.html).
//
// Every job-derived string reaches the DOM through textContent (never innerHTML, which the
// page's Trusted Types policy would refuse anyway). State-changing requests carry the
// X-Nixcell header, which a cross-site form cannot send.
//
// A TCP session is the HttpOnly cookie *and* its proof, kept in this origin's localStorage and
// sent as X-Nixcell-Session (fetch) or ?session= (EventSource): browsers send cookies to every
// port of a host, so another local server would otherwise receive a working session.
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

const PROOF_KEY = "nixcell-session-proof";

function sessionProof() {
  try {
    return window.localStorage.getItem(PROOF_KEY) || "";
  } catch (_) {
    return "";
  }
}

// A URL for an EventSource (which cannot send headers): the session's proof as ?session=.
function withProof(url) {
  const proof = sessionProof();
  if (!proof) return url;
  return `${url}${url.includes("?") ? "&" : "?"}session=${encodeURIComponent(proof)}`;
}

async function api(path, options = {}) {
  const headers = { "X-Nixcell": "1", Accept: "application/json" };
  const proof = sessionProof();
  if (proof) headers["X-Nixcell-Session"] = proof;
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
        const session = await api("/session", { method: "POST", body: { token } });
        try {
          window.localStorage.setItem(PROOF_KEY, session.proof);
        } catch (_) {
          /* no storage: this page works until it is reloaded */
        }
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
// onOpen(reopened) runs on every open: whatever the caller shows from a GET made before the
// stream was open may miss what happened in between (the server subscribes before it answers,
// so a GET after "open" misses nothing).
function liveStream(url, handlers, onOpen) {
  let opened = false;
  const source = new EventSource(withProof(url));
  source.addEventListener("open", () => {
    setLive("");
    if (onOpen) onOpen(opened);
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

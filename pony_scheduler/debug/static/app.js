// The dashboard: plain DOM, no framework. Data is always inserted as text, never as HTML:
// job names, commands and outputs come from users.
//
// The login: a one-time link (#login=CODE, from `pb debug url`) or a pasted gateway token
// is exchanged for a session credential, kept in sessionStorage (scoped to this origin:
// scheme, host and port; never a cookie) and sent in the Authorization header. The event
// stream is read with fetch() because EventSource cannot send that header.
"use strict";

const $ = (selector) => document.querySelector(selector);
const FEED_LIMIT = 200;
const SESSION_KEY = "pony-scheduler.session";
let session = sessionStorage.getItem(SESSION_KEY);
let scope = null;
let selectedRun = null;
let refreshTimer = null;
let stream = null; // the AbortController of the open event stream
let timers = [];

class SessionEnded extends Error {}

async function api(path, options = {}) {
  const headers = Object.assign({}, options.headers || {});
  if (session) headers.Authorization = `Bearer ${session}`;
  const response = await fetch(path, Object.assign({}, options,
    { headers, credentials: "omit", cache: "no-store" }));
  const body = await response.json().catch(() => ({}));
  if (response.status === 401 && path !== "/api/login") {
    loggedOut("Your session ended (the dashboard restarted, a gateway token was rotated, " +
              "or it was idle too long): log in again.");
    throw new SessionEnded("logged out");
  }
  if (!response.ok) {
    const error = new Error(body.error || `HTTP ${response.status}`);
    error.gatewayDown = Boolean(body.gatewayDown);
    throw error;
  }
  return body;
}

function say(text) {
  const box = $("#message");
  box.textContent = text || "";
  box.hidden = !text;
}

function cell(row, text, className) {
  const td = document.createElement("td");
  td.textContent = text === null || text === undefined || text === "" ? "-" : String(text);
  if (className) td.className = className;
  row.appendChild(td);
  return td;
}

function when(iso) {
  return iso ? new Date(iso).toLocaleString() : "-";
}

function duration(seconds) {
  if (seconds === null || seconds === undefined) return "-";
  seconds = Math.floor(seconds);
  const parts = [];
  for (const [size, unit] of [[86400, "d"], [3600, "h"], [60, "m"]]) {
    if (seconds >= size) { parts.push(Math.floor(seconds / size) + unit); seconds %= size; }
  }
  parts.push(seconds + "s");
  return parts.join(" ");
}

function fill(tbody, rows) {
  tbody.replaceChildren(...rows);
}

function failed(what, error) {
  if (error instanceof SessionEnded) return;
  if (error.gatewayDown) {
    // No gateway verified as ours: show no data rather than stale or foreign data.
    fill($("#jobs tbody"), []);
    fill($("#runs tbody"), []);
    say(error.message);
    return;
  }
  say(`${what}: ${error.message}`);
}

async function refreshServices() {
  try {
    const { services } = await api("/api/services");
    fill($("#services tbody"), services.map((s) => {
      const tr = document.createElement("tr");
      tr.dataset.service = s.service;
      cell(tr, s.title);
      cell(tr, s.running ? "running" : s.state, s.running ? "state-succeeded" : "state-failed")
        .classList.add("service-state");
      cell(tr, s.pid);
      cell(tr, s.running ? duration(s.uptimeSeconds) : null);
      cell(tr, s.address);
      return tr;
    }));
  } catch (error) {
    failed("Services", error);
  }
}

async function refreshStatus() {
  const badge = $("#scheduler-state");
  try {
    const { scheduler } = await api("/api/status");
    const age = scheduler.lastHeartbeatAgeSeconds;
    badge.textContent = scheduler.connected
      ? `scheduler: connected${age === null ? "" : `, heartbeat ${Math.round(age)}s ago`}`
      : "scheduler: not connected";
    badge.className = "badge " + (scheduler.connected ? "on" : "off");
  } catch (error) {
    badge.textContent = "scheduler: unknown (gateway down)";
    badge.className = "badge off";
  }
}

function actionButton(job, action, label) {
  const button = document.createElement("button");
  button.textContent = label;
  button.dataset.action = action;
  button.addEventListener("click", async () => {
    button.disabled = true;
    try {
      const answer = await api(`/api/jobs/${encodeURIComponent(job)}/${action}`, { method: "POST" });
      say(action === "run" ? `Run ${answer.run_id} of ${job} queued` : `Job ${job} ${action}d`);
      if (action === "run" && answer.run_id) selectRun(answer.run_id, job);
      await Promise.all([refreshJobs(), refreshRuns()]);
    } catch (error) {
      if (!(error instanceof SessionEnded)) say(`Could not ${action} ${job}: ${error.message}`);
    } finally {
      button.disabled = false;
    }
  });
  return button;
}

async function refreshJobs() {
  try {
    const { jobs } = await api("/api/jobs");
    $("#jobs-empty").hidden = jobs.length > 0;
    fill($("#jobs tbody"), jobs.map((job) => {
      const tr = document.createElement("tr");
      tr.dataset.job = job.name;
      cell(tr, job.name);
      cell(tr, job.schedule);
      cell(tr, when(job.next_run_at));
      cell(tr, job.last_state, job.last_state ? `state-${job.last_state}` : "");
      cell(tr, job.enabled ? "yes" : "paused").classList.add("enabled");
      const actions = cell(tr, "");
      actions.textContent = "";
      if (scope === "admin") {
        actions.appendChild(actionButton(job.name, "run", "Run"));
        actions.appendChild(job.enabled ? actionButton(job.name, "pause", "Pause")
                                        : actionButton(job.name, "resume", "Resume"));
      }
      return tr;
    }));
  } catch (error) {
    failed("Jobs", error);
  }
}

async function refreshRuns() {
  try {
    const { runs } = await api("/api/runs?limit=30");
    fill($("#runs tbody"), runs.map((run) => {
      const tr = document.createElement("tr");
      tr.dataset.runId = run.id;
      tr.dataset.job = run.job;
      tr.dataset.state = run.state;
      if (run.id === selectedRun) tr.classList.add("selected");
      cell(tr, run.id);
      cell(tr, run.job);
      cell(tr, run.state, `state state-${run.state}`);
      cell(tr, run.trigger);
      cell(tr, when(run.started_at));
      cell(tr, run.duration_s === null ? null : `${run.duration_s}s`);
      cell(tr, run.exit_code);
      tr.addEventListener("click", () => selectRun(run.id, run.job));
      return tr;
    }));
  } catch (error) {
    failed("Runs", error);
  }
}

async function selectRun(id, job) {
  selectedRun = id;
  for (const tr of document.querySelectorAll("#runs tbody tr")) {
    tr.classList.toggle("selected", Number(tr.dataset.runId) === id);
  }
  await showRun(id, job);
}

async function showRun(id, job) {
  const title = $("#output-title");
  const output = $("#output");
  try {
    const run = await api(`/api/runs/${id}`);
    if (selectedRun !== id) return;
    title.textContent = `run ${run.id} (${run.job}) — ${run.state}`;
    output.dataset.runId = run.id;
    output.dataset.state = run.state;
    output.textContent = run.output || (run.state === "queued" || run.state === "running"
      ? "(no output yet)" : "(no output)");
  } catch (error) {
    if (error instanceof SessionEnded) return;
    title.textContent = `run ${id} (${job || "?"})`;
    output.textContent = `Could not load the output: ${error.message}`;
  }
}

function refreshSoon() {
  // Several events often arrive together (started, finished): one refresh for all of them.
  clearTimeout(refreshTimer);
  refreshTimer = setTimeout(() => {
    refreshJobs();
    refreshRuns();
    if (selectedRun !== null) showRun(selectedRun);
  }, 150);
}

function describe(event) {
  const d = event.data || {};
  switch (event.type) {
    case "run.started": return `${d.job} run ${d.run_id} started (attempt ${d.attempt}, PID ${d.pid})`;
    case "run.finished":
    case "run.failed": return `${d.job} run ${d.run_id} ${d.state} (exit ${d.exit_code}, ${d.duration_s}s)`;
    case "heartbeat": return `scheduler ${d.pid} alive, ${d.running} running`;
    case "connect": return `scheduler ${d.pid} connected`;
    case "disconnect": return `scheduler ${d.pid} disconnected${d.reason ? ` (${d.reason})` : ""}`;
    case "gateway.unreachable": return `gateway ${d.address} unreachable: ${d.error}; retrying in ${d.retryInSeconds}s`;
    case "gateway.connected": return `connected to the gateway at ${d.address}`;
    case "gateway.hello": return `gateway stream open (instance ${d.instance})`;
    default: return JSON.stringify(d);
  }
}

function addToFeed(event) {
  const li = document.createElement("li");
  li.dataset.type = event.type;
  const time = event.timestamp ? new Date(event.timestamp) : new Date();
  li.textContent = `${time.toLocaleTimeString()} ${event.type}: ${describe(event)}`;
  const list = $("#events");
  list.prepend(li);
  while (list.children.length > FEED_LIMIT) list.lastChild.remove();
}

function setFeedState(text, on) {
  const badge = $("#feed-state");
  badge.textContent = text;
  badge.className = "badge " + (on ? "on" : "off");
}

function handleEvent(text) {
  let event;
  try { event = JSON.parse(text); } catch (error) { return; }
  addToFeed(event);
  if (event.type === "gateway.unreachable") {
    setFeedState("gateway down, reconnecting…", false);
    refreshServices();
    refreshStatus();
    refreshJobs();
    refreshRuns();
  } else if (event.type === "gateway.connected") {
    setFeedState("live", true);
    refreshAll();
  } else if (event.type.startsWith("run.")) {
    refreshSoon();
  } else if (event.type === "connect" || event.type === "disconnect") {
    refreshStatus();
    refreshServices();
  }
}

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

// Server-sent events over fetch(): frames end with a blank line; `id:` lines are kept to
// resume (Last-Event-ID) after a reconnection, as EventSource would.
async function streamEvents() {
  let lastId = null;
  const controller = new AbortController();
  stream = controller;
  while (session && stream === controller) {
    try {
      const headers = { Authorization: `Bearer ${session}` };
      if (lastId) headers["Last-Event-ID"] = lastId;
      const response = await fetch("/api/events",
        { headers, signal: controller.signal, cache: "no-store", credentials: "omit" });
      if (response.status === 401) {
        loggedOut("Your session ended: log in again.");
        return;
      }
      if (!response.ok || !response.body) throw new Error(`HTTP ${response.status}`);
      setFeedState("live", true);
      const reader = response.body.getReader();
      const decoder = new TextDecoder();
      let buffer = "";
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buffer += decoder.decode(value, { stream: true }).replace(/\r\n?/g, "\n");
        let end;
        while ((end = buffer.indexOf("\n\n")) >= 0) {
          const block = buffer.slice(0, end);
          buffer = buffer.slice(end + 2);
          const data = [];
          for (const line of block.split("\n")) {
            if (line.startsWith("id:")) lastId = line.slice(3).trim();
            else if (line.startsWith("data:")) data.push(line.slice(5).replace(/^ /, ""));
          }
          if (data.length) handleEvent(data.join("\n"));
        }
      }
    } catch (error) {
      if (controller.signal.aborted) return;
    }
    if (stream !== controller) return;
    setFeedState("reconnecting…", false);
    await sleep(2000);
  }
}

function refreshAll() {
  refreshServices();
  refreshStatus();
  refreshJobs();
  refreshRuns();
}

function showLogin(message) {
  $("#dashboard").hidden = true;
  $("#login").hidden = false;
  $("#logout").hidden = true;
  $("#scope").hidden = true;
  say(message || "");
  $("#login-token").focus();
}

function enter(newScope) {
  scope = newScope;
  $("#login").hidden = true;
  $("#dashboard").hidden = false;
  $("#logout").hidden = false;
  const badge = $("#scope");
  badge.hidden = false;
  badge.textContent = scope === "admin" ? "admin" : "read-only";
  say("");
  refreshAll();
  streamEvents();
  timers.push(setInterval(() => { refreshServices(); refreshStatus(); }, 5000));
  // A safety net for anything the event stream cannot tell (e.g. a job added with `pb job add`).
  timers.push(setInterval(() => { refreshJobs(); refreshRuns(); }, 10000));
}

function loggedOut(message) {
  session = null;
  scope = null;
  sessionStorage.removeItem(SESSION_KEY);
  if (stream) stream.abort();
  stream = null;
  for (const timer of timers) clearInterval(timer);
  timers = [];
  for (const body of document.querySelectorAll("tbody")) fill(body, []);
  $("#events").replaceChildren();
  $("#output").textContent = "";
  setFeedState("logged out", false);
  showLogin(message);
}

async function login(credentials) {
  try {
    const answer = await api("/api/login", {
      method: "POST", headers: { "Content-Type": "application/json" },
      body: JSON.stringify(credentials) });
    session = answer.session;
    sessionStorage.setItem(SESSION_KEY, session);
    enter(answer.scope);
  } catch (error) {
    showLogin(`Login failed: ${error.message}`);
  }
}

$("#login-form").addEventListener("submit", (event) => {
  event.preventDefault();
  const field = $("#login-token");
  const token = field.value.trim();
  field.value = "";
  if (token) login({ token });
});

$("#logout").addEventListener("click", async () => {
  try { await api("/api/logout", { method: "POST" }); } catch (error) { /* logged out anyway */ }
  loggedOut("Logged out.");
});

// A login link's code, taken out of the address bar and the history at once (it works
// once anyway); null when the URL holds none.
function takeCode() {
  const match = location.hash.match(/^#login=([A-Za-z0-9_-]+)$/);
  if (!match) return null;
  history.replaceState(null, "", location.pathname + location.search);
  return match[1];
}

// A link opened in a tab that already shows the dashboard only changes the fragment.
window.addEventListener("hashchange", () => {
  const code = takeCode();
  if (code) {
    if (session) loggedOut("");
    login({ code });
  }
});

async function start() {
  const code = takeCode();
  if (code) {
    await login({ code });
  } else if (session) {
    try {
      enter((await api("/api/session")).scope);
    } catch (error) {
      if (!(error instanceof SessionEnded)) showLogin(error.message);
    }
  } else {
    showLogin("");
  }
}

start();

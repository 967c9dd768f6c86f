// Shared helpers of the portal's pages: the API with the session cookie and the XSRF header,
// text-only DOM building (never innerHTML), times, notifications and the job event stream.

/** The value of the hpcgw_xsrf cookie (what check_xsrf wants back as X-XSRFToken). */
export function xsrf() {
  for (const part of document.cookie.split(";")) {
    const [name, ...rest] = part.trim().split("=");
    if (name === "hpcgw_xsrf") return decodeURIComponent(rest.join("="));
  }
  return "";
}

/** An API error: the problem+json body when the gateway sent one. */
export class ApiError extends Error {
  constructor(status, problem) {
    super((problem && (problem.detail || problem.title)) || `HTTP ${status}`);
    this.status = status;
    this.problem = problem || {};
  }
}

/** Call the API; JSON answers parsed, errors thrown as ApiError. 30 s timeout. */
export async function api(path, options = {}) {
  const method = options.method || "GET";
  const headers = { Accept: "application/json", ...(options.headers || {}) };
  if (method !== "GET") headers["X-XSRFToken"] = xsrf();
  const response = await fetch(path, {
    ...options, method, headers, credentials: "same-origin",
    signal: options.signal || AbortSignal.timeout(30000),
  });
  const type = response.headers.get("Content-Type") || "";
  const body = type.includes("json") ? await response.json() : await response.text();
  if (!response.ok) throw new ApiError(response.status, typeof body === "object" ? body : null);
  return { body, response };
}

/** An element with text (textContent only) and attributes. */
export function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (value === null || value === undefined || value === false) continue;
    if (key === "text") node.textContent = String(value);
    else if (key === "class") node.className = value;
    else node.setAttribute(key, value === true ? "" : String(value));
  }
  for (const child of children) if (child) node.append(child);
  return node;
}

/** Seconds in a Slurm-like "D-HH:MM:SS" / "HH:MM:SS" / "MM:SS" text, or null. */
export function slurmSeconds(text) {
  const match = /^(?:(\d+)-)?(?:(\d+):)?(\d+)(?::(\d+))?$/.exec(String(text || "").trim());
  if (!match) return null;
  const [, days, a, b, c] = match;
  let h = 0, m = 0, s = 0;
  if (c !== undefined) { h = Number(a || 0); m = Number(b); s = Number(c); }
  else if (a !== undefined) { m = Number(a); s = Number(b); }
  else if (days !== undefined) { h = Number(b); }
  else { m = Number(b); }
  return Number(days || 0) * 86400 + h * 3600 + m * 60 + s;
}

/** "1d 02:03:04" style duration. */
export function duration(seconds) {
  if (seconds === null || seconds === undefined || !isFinite(seconds)) return "";
  seconds = Math.max(0, Math.floor(seconds));
  const d = Math.floor(seconds / 86400), h = Math.floor(seconds / 3600) % 24;
  const m = Math.floor(seconds / 60) % 60, s = seconds % 60;
  const pad = (n) => String(n).padStart(2, "0");
  return (d ? `${d}d ` : "") + `${pad(h)}:${pad(m)}:${pad(s)}`;
}

export const TERMINAL = new Set(["succeeded", "failed", "cancelled", "timed_out"]);

/** Elapsed and remaining seconds of a job now (null where they do not apply). */
export function clock(job, now = Date.now()) {
  if (!job.started_at) return { elapsed: null, remaining: null };
  const start = Date.parse(job.started_at);
  const end = job.ended_at ? Date.parse(job.ended_at) : now;
  const elapsed = (end - start) / 1000;
  const limit = slurmSeconds(job.time);
  const remaining = job.ended_at || limit === null ? null : limit - elapsed;
  return { elapsed, remaining };
}

/** Seconds until the gateway stops a ready lab for idleness (`timeout`: the cluster's
 * lab_idle_timeout), or null when that does not apply (not ready, no activity known). */
export function idleLeft(job, timeout, now = Date.now()) {
  if (job.state !== "ready" || !job.last_activity || !timeout) return null;
  return Math.max(0, Date.parse(job.last_activity) / 1000 + timeout - now / 1000);
}

/** Whether an idle lab's warning shows: within a quarter of the timeout, at most 15 min. */
export function idleWarns(left, timeout) {
  return left !== null && left <= Math.min(900, timeout / 4);
}

/** A state badge. */
export function stateBadge(state) {
  return el("span", { class: `state state-${state}`, text: state });
}

/** Ask once for notifications (a user gesture calls it). */
export async function allowNotifications() {
  if (!("Notification" in window)) return "unsupported";
  return Notification.requestPermission();
}

/** Tell the user a job started or ended: the page title always, a notification if allowed. */
export function announce(job, previous) {
  const started = ["running", "ready"].includes(job.state) && !["running", "ready"].includes(previous);
  const ended = TERMINAL.has(job.state) && !TERMINAL.has(previous);
  if (!previous || !(started || ended)) return;
  const text = `${job.name}: ${job.state}`;
  document.title = `${text} — hpcgw`;
  if ("Notification" in window && Notification.permission === "granted") {
    try { new Notification("hpcgw", { body: text, tag: job.id }); } catch { /* not allowed here */ }
  }
}

/** Open the job event stream; onJob(job) per change; status text in `live`. Reconnects by
 *  itself (EventSource resends Last-Event-ID). */
export function streamJobs(after, everyone, live, onJob) {
  const query = new URLSearchParams();
  if (after) query.set("after", after);
  if (everyone) query.set("all", "1");
  const source = new EventSource(`/api/v1/jobs/stream?${query}`);
  source.addEventListener("open", () => { live.textContent = "Live: updates arrive as they happen."; });
  source.addEventListener("error", () => { live.textContent = "Live updates interrupted; reconnecting…"; });
  source.addEventListener("job", (event) => {
    let job;
    try { job = JSON.parse(event.data); } catch { return; }
    onJob(job);
  });
  window.addEventListener("pagehide", () => source.close());
  return source;
}

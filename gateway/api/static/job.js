// One job's page: its state live (the event stream), clock, progress, cancel, the log
// followed as it grows, downloads, and the executed notebook in a sandboxed frame.
import { announce, api, clock, duration, el, stateBadge, streamJobs, TERMINAL } from "./common.js";

const root = document.getElementById("job");
const jobId = root.dataset.job;
const live = document.getElementById("live");
const errors = document.getElementById("job-errors");
const text = (id, value) => { document.getElementById(id).textContent = value || "—"; };
let job = null;
let logNext = 0;
let logDone = false;
let filesShown = false;

function show(next) {
  if (job && job.updated_at > next.updated_at) return;
  announce(next, job ? job.state : null);
  job = next;
  document.getElementById("job-name").textContent = job.name;
  document.getElementById("state").replaceChildren(stateBadge(job.state));
  document.getElementById("state").dataset.state = job.state;
  text("reason", job.reason ? `(${job.reason})` : "");
  text("message", job.message);
  text("pending", job.state === "pending" ? job.pending_reason : "");
  text("expected-start", job.state === "pending" && job.expected_start
    ? new Date(job.expected_start).toLocaleString() : "");
  const where = [job.cluster, job.partition, `${job.cpus} CPUs`, job.memory, job.gpus ? `${job.gpus} GPU ${job.gpu_type || ""}` : null, job.time, job.image].filter(Boolean);
  text("resources", where.join(" · "));
  text("slurm", job.slurm_job_id ? `${job.slurm_job_id}${job.node ? ` on ${job.node}` : ""}` : "");
  const bar = document.getElementById("progress");
  if (job.progress && job.progress.total) {
    bar.max = job.progress.total; bar.value = job.progress.done;
    text("progress-text", `${job.progress.done} of ${job.progress.total} cells`);
  } else text("progress-text", job.kind === "lab" ? "" : "not started");
  document.getElementById("cancel").hidden = TERMINAL.has(job.state);
  document.getElementById("cancel").textContent = job.kind === "lab" ? "Stop lab" : "Cancel";
  const open = document.getElementById("open-lab");
  open.hidden = !(job.kind === "lab" && job.state === "ready");
  if (job.lab_url) open.href = job.lab_url;
  const download = document.getElementById("download-nb");
  download.hidden = !job.notebook_available;
  download.href = `/api/v1/jobs/${job.id}/notebook`;
  if (job.notebook_available && TERMINAL.has(job.state)) showNotebook();
  if (TERMINAL.has(job.state) && !filesShown) showFiles();
  tick();
}

function tick() {
  if (!job) return;
  const { elapsed, remaining } = clock(job);
  text("elapsed", elapsed === null ? "" : duration(elapsed));
  text("remaining", remaining === null ? "" : duration(remaining));
}

function showNotebook() {
  const frame = document.getElementById("notebook");
  const src = `/jobs/${job.id}/notebook.html`;
  if (frame.getAttribute("src") !== src) frame.setAttribute("src", src);
  document.getElementById("nb-section").hidden = false;
}

async function showFiles() {
  filesShown = true;
  try {
    const { body } = await api(`/api/v1/jobs/${job.id}/files`);
    const list = document.getElementById("files");
    list.replaceChildren(...body.files.map((f) => el("li", {}, el("a", {
      href: `/api/v1/jobs/${job.id}/files/${f.path.split("/").map(encodeURIComponent).join("/")}`,
      download: f.path.split("/").pop(), text: `${f.path} (${f.size} bytes)` }))));
    if (!body.files.length) list.replaceChildren(el("li", { text: "No output files." }));
  } catch (error) {
    if (error.status !== 410) errors.textContent = error.message;
  }
}

/** Read the log from where the last read stopped; appends text only. */
async function followLog() {
  if (logDone) return;
  const path = `/api/v1/jobs/${jobId}/log?offset=${logNext}`;
  try {
    const response = await fetch(path, { credentials: "same-origin", signal: AbortSignal.timeout(30000) });
    if (!response.ok) return;
    const chunk = await response.text();
    const next = response.headers.get("Hpcgw-Log-Next");
    const state = response.headers.get("Hpcgw-Job-State");
    const pre = document.getElementById("log");
    const atEnd = pre.scrollTop + pre.clientHeight >= pre.scrollHeight - 4;
    if (chunk) pre.append(document.createTextNode(chunk));
    if (atEnd) pre.scrollTop = pre.scrollHeight;
    if (next !== null) logNext = Number(next);
    if (TERMINAL.has(state) && !chunk) logDone = true;
  } catch { /* the next round tries again */ }
}

async function refresh() {
  try { show((await api(`/api/v1/jobs/${jobId}`)).body); } catch (error) { errors.textContent = error.message; }
}

document.getElementById("cancel").addEventListener("click", async (event) => {
  event.target.disabled = true;
  try { show((await api(`/api/v1/jobs/${jobId}/cancel`, { method: "POST" })).body); }
  catch (error) { errors.textContent = error.message; }
  finally { event.target.disabled = false; }
});

setInterval(tick, 1000);
setInterval(() => { if (job && !TERMINAL.has(job.state)) refresh(); }, 5000);
(async function loop() { await followLog(); if (!logDone) setTimeout(loop, 1500); })();
refresh().then(() => streamJobs(root.dataset.after, false, live, (changed) => {
  if (changed.id === jobId) show(changed);
}));

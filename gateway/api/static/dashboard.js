// The dashboard: the notebook and lab forms, and the user's jobs updated live.
import { allowNotifications, api, el, streamJobs, TERMINAL } from "./common.js";
import { JobCards } from "./cards.js";
import { changedParameters, findParameters, readValue } from "./params.js";
import { resourceForm, showProblem } from "./resources.js";

const root = document.getElementById("dashboard");
const everyone = root.dataset.admin === "all";
const live = document.getElementById("live");
const report = (error) => { live.textContent = `Error: ${error.message}`; };
const cards = new JobCards(document.getElementById("jobs"), document.getElementById("no-jobs"), everyone, report);

async function loadJobs(quiet = false) {
  const path = everyone ? "/api/v1/admin/jobs?limit=100" : "/api/v1/jobs?limit=100";
  const { body } = await api(path);
  for (const job of body.jobs) cards.update(job, quiet);
}

function notifications() {
  const button = document.getElementById("notify");
  const box = document.getElementById("notify-box");
  if (!("Notification" in window) || Notification.permission !== "default") { box.hidden = true; return; }
  button.addEventListener("click", async () => { await allowNotifications(); box.hidden = true; });
}

function clearErrors(form, box) {
  box.replaceChildren();
  for (const note of form.querySelectorAll(".field-error")) note.remove();
  for (const input of form.querySelectorAll("[aria-invalid]")) input.removeAttribute("aria-invalid");
}

// -- the notebook form ---------------------------------------------------------------------

const run = { file: null, params: [] };

function paramField(param) {
  const id = `param-${param.name}`;
  const attrs = { id, "data-param": param.name };
  let input;
  if (param.type === "bool") input = el("input", { ...attrs, type: "checkbox", checked: param.value });
  else if (param.type === "int" || param.type === "float") {
    input = el("input", { ...attrs, type: "number", step: param.type === "int" ? "1" : "any", value: String(param.value) });
  } else input = el("input", { ...attrs, type: "text", value: param.value === null ? "" : param.value, placeholder: param.type === "none" ? "None" : null });
  return el("div", { class: "field" }, el("label", { for: id, text: `${param.name} (${param.type})` }), input);
}

async function chooseNotebook(file) {
  const info = document.getElementById("nb-info");
  const box = document.getElementById("params");
  run.file = file; run.params = [];
  box.replaceChildren(el("legend", { text: "Parameters" }));
  let notebook;
  try { notebook = JSON.parse(await file.text()); } catch {
    info.textContent = `${file.name} is not a notebook (not JSON).`;
    return;
  }
  info.textContent = `${file.name} (${Math.ceil(file.size / 1024)} KiB)`;
  document.getElementById("run-name").placeholder = file.name.replace(/\.ipynb$/, "");
  run.params = findParameters(notebook);
  if (!run.params.length) {
    box.append(el("p", { class: "hint", text: "No cell tagged “parameters” with simple values: the notebook runs as it is." }));
  }
  for (const param of run.params) box.append(paramField(param));
}

function readParams(problems) {
  const values = {};
  for (const param of run.params) {
    const input = document.getElementById(`param-${param.name}`);
    const read = readValue(param, input.value, input.checked);
    if (read.error) problems.push(`Parameter ${param.name}: ${read.error}.`);
    else values[param.name] = read.value;
  }
  return changedParameters(run.params, values);
}

function addInputRow() {
  const box = document.getElementById("run-inputs");
  const n = box.childElementCount;
  const field = (name, label, input) => el("div", { class: "field" }, el("label", { for: `in-${n}-${name}`, text: label }), input);
  box.append(el("fieldset", { class: "grid", "data-input": n }, el("legend", { text: `Input ${n + 1}` }),
    field("parameter", "Parameter", el("input", { id: `in-${n}-parameter`, "data-key": "parameter" })),
    field("storage", "Storage server", el("input", { id: `in-${n}-storage`, "data-key": "storage" })),
    field("path", "Path there", el("input", { id: `in-${n}-path`, "data-key": "path", placeholder: "/data/file.csv" })),
    field("mode", "Mode", el("select", { id: `in-${n}-mode`, "data-key": "mode" },
      el("option", { value: "copy", text: "copy" }), el("option", { value: "mount", text: "mount" })))));
}

function readInputs() {
  return [...document.querySelectorAll("#run-inputs [data-input]")].map((row) => {
    const input = {};
    for (const field of row.querySelectorAll("[data-key]")) input[field.dataset.key] = field.value.trim();
    return input;
  }).filter((input) => input.parameter || input.path);
}

async function submitRun(form, resources) {
  const box = document.getElementById("run-errors");
  clearErrors(form, box);
  const problems = resources.problems();
  if (!run.file) problems.push("Choose a notebook first.");
  const parameters = readParams(problems);
  if (problems.length) { box.replaceChildren(...problems.map((p) => el("p", { text: p }))); return; }
  const spec = { kind: "notebook", ...resources.read(), parameters };
  const name = document.getElementById("run-name").value.trim();
  if (name) spec.name = name;
  const outputs = document.getElementById("run-outputs").value.split("\n").map((p) => p.trim()).filter(Boolean);
  if (outputs.length) spec.outputs = outputs.map((path) => ({ path }));
  const inputs = readInputs();
  if (inputs.length) spec.inputs = inputs;
  const body = new FormData();
  body.append("notebook", run.file, run.file.name);
  body.append("spec", new Blob([JSON.stringify(spec)], { type: "application/json" }));
  for (const side of document.getElementById("run-side").files) body.append("file", side, side.name);
  await send(form, box, { method: "POST", body }, resources);
}

async function send(form, box, request, resources) {
  const button = form.querySelector("button[type=submit]");
  button.disabled = true;
  try {
    const { body: job } = await api("/api/v1/jobs", request);
    cards.update(job, true);
    box.replaceChildren();
    live.textContent = `Submitted ${job.name}.`;
  } catch (error) {
    showProblem(error, box, (field) => (field === "notebook" ? document.getElementById("nb-file")
      : field === "parameters" ? document.getElementById("params") : resources.field(field)));
  } finally {
    button.disabled = false;
  }
}

async function forms() {
  const { body } = await api("/api/v1/clusters");
  if (!body.clusters.length) { live.textContent = "No cluster is configured."; return; }
  for (const cluster of body.clusters) cards.idleTimeouts.set(cluster.name, cluster.lab_idle_timeout);
  const runForm = document.getElementById("run-form");
  const labForm = document.getElementById("lab-form");
  const runRes = resourceForm(runForm.querySelector(".resources"), body.clusters, "notebook");
  const labRes = resourceForm(labForm.querySelector(".resources"), body.clusters, "lab");
  const picker = document.getElementById("nb-file");
  picker.addEventListener("change", () => picker.files[0] && chooseNotebook(picker.files[0]));
  const drop = document.getElementById("drop");
  drop.addEventListener("dragover", (event) => { event.preventDefault(); drop.classList.add("over"); });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (event) => {
    event.preventDefault(); drop.classList.remove("over");
    const file = event.dataTransfer.files[0];
    if (file) chooseNotebook(file);
  });
  document.getElementById("add-input").addEventListener("click", addInputRow);
  runForm.addEventListener("submit", (event) => { event.preventDefault(); submitRun(runForm, runRes); });
  labForm.addEventListener("submit", (event) => {
    event.preventDefault();
    const box = document.getElementById("lab-errors");
    clearErrors(labForm, box);
    const problems = labRes.problems();
    if (problems.length) { box.replaceChildren(...problems.map((p) => el("p", { text: p }))); return; }
    const spec = { kind: "lab", ...labRes.read() };
    const name = document.getElementById("lab-name").value.trim();
    if (name) spec.name = name;
    send(labForm, box, { method: "POST", body: JSON.stringify(spec), headers: { "Content-Type": "application/json" } }, labRes);
  });
}

// Progress and pending reasons change without a state change: refresh while jobs are active.
setInterval(() => {
  const active = [...cards.jobs.values()].some(({ job }) => !TERMINAL.has(job.state));
  if (active && document.visibilityState === "visible") loadJobs().catch(() => {});
}, 10000);

notifications();
if (!everyone) forms().catch(report);
loadJobs(true).then(() => streamJobs(root.dataset.after, everyone, live, (job) => cards.update(job))).catch(report);

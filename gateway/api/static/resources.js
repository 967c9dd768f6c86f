// The resource form (cluster, partition, GPUs, CPUs, memory, time, image) from
// GET /api/v1/clusters, with each partition's limits shown and invalid combinations
// explained before anything is sent.
import { el, slurmSeconds } from "./common.js";

const UNITS = { K: 1 / 1024, M: 1, G: 1024, T: 1024 * 1024 };

/** Megabytes in "4G"/"512M"/"1024" (MB), or null if it is no memory size. */
export function memoryMb(text) {
  const match = /^(\d+(?:\.\d+)?)([KMGT]?)B?$/i.exec(String(text || "").trim());
  return match ? Number(match[1]) * UNITS[(match[2] || "M").toUpperCase()] : null;
}

/** Every problem of a resource choice against the cluster's policy (sentences). */
export function problemsOf(choice, cluster) {
  const part = cluster && cluster.partitions[choice.partition];
  if (!part) return [`Choose a partition of ${cluster ? cluster.name : "a cluster"}.`];
  const problems = [];
  if (choice.gpus > 0 && part.max_gpus === 0) {
    problems.push(`Partition ${choice.partition} has no GPUs: set GPUs to 0 or choose a GPU partition.`);
  } else if (choice.gpus > part.max_gpus) {
    problems.push(`Partition ${choice.partition} allows at most ${part.max_gpus} GPUs.`);
  }
  if (choice.gpu_type && !part.gpu_types.includes(choice.gpu_type)) {
    problems.push(`GPU type ${choice.gpu_type} is not offered on ${choice.partition}.`);
  }
  if (choice.gpu_type && !(choice.gpus > 0)) problems.push("A GPU type needs at least 1 GPU.");
  if (!Number.isInteger(choice.cpus) || choice.cpus < 1) problems.push("CPUs: a whole number, at least 1.");
  else if (choice.cpus > part.max_cpus) problems.push(`Partition ${choice.partition} allows at most ${part.max_cpus} CPUs.`);
  if (choice.memory) {
    const asked = memoryMb(choice.memory), most = memoryMb(part.max_memory);
    if (asked === null) problems.push("Memory: a size such as 512M or 4G.");
    else if (most !== null && asked > most) problems.push(`Partition ${choice.partition} allows at most ${part.max_memory} of memory.`);
  }
  if (choice.time) {
    const asked = slurmSeconds(choice.time), most = slurmSeconds(part.max_time);
    if (asked === null || asked <= 0) problems.push("Time: HH:MM:SS or D-HH:MM:SS.");
    else if (most !== null && asked > most) problems.push(`Partition ${choice.partition} allows at most ${part.max_time}.`);
  }
  const image = cluster.images.find((i) => i.name === choice.image);
  if (image && choice.gpus > 0 && !image.gpu) problems.push(`Image ${image.name} has no GPU support.`);
  return problems;
}

function options(select, values, chosen) {
  select.replaceChildren(...values.map(([value, label]) => el("option", { value, text: label, selected: value === chosen })));
}

/** Wire one resource fieldset (data-prefix) to the clusters; returns {read, problems}. */
export function resourceForm(fieldset, clusters, kind) {
  const prefix = fieldset.dataset.prefix;
  const field = (name) => fieldset.querySelector(`[data-res=${name}]`);
  const cluster = () => clusters.find((c) => c.name === field("cluster").value) || clusters[0];
  const limits = document.getElementById(`${prefix}-limits`);
  const list = document.getElementById(`${prefix}-problems`);

  function fillCluster() {
    const c = cluster();
    options(field("partition"), Object.keys(c.partitions).map((p) => [p, p]), c.default_partition);
    const images = [["", c.default_image ? `default (${c.default_image})` : "host environment"],
      ...c.images.map((i) => [i.name, i.description ? `${i.name}: ${i.description}` : i.name])];
    options(field("image"), images, "");
    fillPartition();
  }
  function fillPartition() {
    const part = cluster().partitions[field("partition").value];
    if (!part) return;
    options(field("gpu_type"), [["", "any"], ...part.gpu_types.map((t) => [t, t])], "");
    field("gpus").max = String(part.max_gpus);
    field("cpus").max = String(part.max_cpus);
    if (!field("cpus").value) field("cpus").value = String(part.default_cpus);
    const memory = kind === "lab" ? part.lab_default_memory || part.default_memory : part.default_memory;
    field("memory").placeholder = memory ? `default ${memory}` : "Slurm's default";
    field("time").placeholder = `default ${part.default_time}`;
    limits.textContent = `Limits on ${field("partition").value}: up to ${part.max_cpus} CPUs, ` +
      `${part.max_memory} memory, ${part.max_gpus} GPUs` +
      (part.gpu_types.length ? ` (${part.gpu_types.join(", ")})` : "") + `, ${part.max_time}.`;
    check();
  }
  function read() {
    const spec = { cluster: cluster().name, partition: field("partition").value,
      gpus: Number(field("gpus").value || 0), cpus: Number(field("cpus").value || 0) };
    for (const name of ["gpu_type", "memory", "time", "image"]) {
      const value = field(name).value.trim();
      if (value) spec[name] = value;
    }
    return spec;
  }
  function check() {
    const problems = problemsOf(read(), cluster());
    list.replaceChildren(...problems.map((p) => el("li", { text: p })));
    return problems;
  }
  options(field("cluster"), clusters.map((c) => [c.name, c.reachable === false ? `${c.name} (unreachable)` : c.name]), clusters[0].name);
  field("cluster").addEventListener("change", fillCluster);
  field("partition").addEventListener("change", fillPartition);
  for (const name of ["gpus", "gpu_type", "cpus", "memory", "time", "image"]) {
    field(name).addEventListener("input", check);
    field(name).addEventListener("change", check);
  }
  fillCluster();
  return { read, problems: check, field };
}

/** Show a 422's failing fields next to the form fields (and all of them in `box`). */
export function showProblem(error, box, fieldFor) {
  const problem = error.problem || {};
  const errors = Array.isArray(problem.errors) ? problem.errors : [];
  box.replaceChildren(el("p", { text: error.message }),
    ...errors.map((e) => el("p", { text: `${e.field}: ${e.message}` })));
  for (const e of errors) {
    const input = fieldFor(String(e.field).split(".")[0]);
    if (!input) continue;
    input.setAttribute("aria-invalid", "true");
    const note = el("span", { class: "field-error", text: e.message });
    input.insertAdjacentElement("afterend", note);
  }
}

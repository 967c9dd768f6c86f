// Job and lab cards of the dashboard: built with textContent only, updated in place.
import {
  api, announce, clock, duration, el, idleLeft, idleWarns, stateBadge, TERMINAL,
} from "./common.js";

/** Keeps the cards of the list in `list` (newest first) up to date. */
export class JobCards {
  constructor(list, empty, everyone, onError) {
    this.list = list; this.empty = empty; this.everyone = everyone; this.onError = onError;
    this.jobs = new Map();
    this.idleTimeouts = new Map();  // cluster name -> seconds an idle lab is kept
    setInterval(() => this.tick(), 1000);
  }

  /** A job as the API or the stream gave it; older news than what is shown is ignored. */
  update(job, quiet = false) {
    const known = this.jobs.get(job.id);
    if (known && known.job.updated_at > job.updated_at) return;
    if (!quiet) announce(job, known ? known.job.state : null);
    const card = this.card(job);
    if (known) known.node.replaceWith(card);
    else this.insert(card, job);
    this.jobs.set(job.id, { job, node: card });
    this.empty.hidden = this.jobs.size > 0;
  }

  insert(card, job) {
    const later = [...this.jobs.values()].filter((k) => k.job.created_at < job.created_at)
      .sort((a, b) => (a.job.created_at < b.job.created_at ? 1 : -1))[0];
    if (later) later.node.before(card); else this.list.append(card);
  }

  card(job) {
    const mine = !this.everyone || job.user === undefined;
    const title = el("h3", {}, mine && !this.everyone
      ? el("a", { href: `/jobs/${job.id}`, text: job.name }) : el("span", { text: job.name }));
    const card = el("li", { class: "card", "data-job": job.id, "data-state": job.state }, title,
      el("p", {}, stateBadge(job.state), ` ${job.kind}`, job.user ? ` · ${job.user}` : ""));
    if (job.state === "pending" && job.pending_reason) {
      card.append(el("p", { text: `Waiting: ${job.pending_reason}` }));
    }
    if (job.state === "pending" && job.expected_start) {
      const when = new Date(job.expected_start).toLocaleString();
      card.append(el("p", { class: "expected", text: `Slurm expects it to start at ${when}` }));
    }
    if (job.reason) card.append(el("p", { text: `Reason: ${job.reason}` }));
    if (job.message) card.append(el("p", { class: "hint", text: job.message }));
    if (job.progress && job.progress.total) {
      card.append(el("p", { text: `Cells: ${job.progress.done} of ${job.progress.total}` }));
    }
    card.append(el("p", { class: "clock" }), el("p", { class: "idle warning", hidden: "" }));
    const actions = el("div", { class: "actions" });
    if (job.kind === "lab" && job.state === "ready" && job.lab_url && !this.everyone) {
      actions.append(el("a", { class: "button", href: job.lab_url, target: "_blank", rel: "noopener", text: "Open" }));
    }
    if (!TERMINAL.has(job.state) && !this.everyone) {
      const stop = el("button", { type: "button", class: "danger", text: job.kind === "lab" ? "Stop" : "Cancel" });
      stop.setAttribute("aria-label", `${stop.textContent} ${job.name}`);
      stop.addEventListener("click", () => this.cancel(job, stop));
      actions.append(stop);
    }
    if (actions.childElementCount) card.append(actions);
    this.fillClock(card, job);
    return card;
  }

  fillClock(card, job) {
    const { elapsed, remaining } = clock(job);
    const parts = [];
    if (elapsed !== null) parts.push(`elapsed ${duration(elapsed)}`);
    if (remaining !== null) parts.push(`${duration(remaining)} left`);
    const node = card.querySelector(".clock");
    node.textContent = parts.join(" · ");
    node.classList.toggle("warning", remaining !== null && remaining < 300);
    if (remaining !== null && remaining < 300 && job.kind === "lab") {
      node.textContent += " — the lab stops soon: save your work";
    }
    this.fillIdle(card, job);
  }

  /** A ready lab close to its idle stop: how long until the gateway stops it. */
  fillIdle(card, job) {
    const node = card.querySelector(".idle");
    const timeout = this.idleTimeouts.get(job.cluster);
    const left = idleLeft(job, timeout);
    node.hidden = !idleWarns(left, timeout);
    if (!node.hidden) {
      node.textContent = `Idle: the gateway stops this lab in ${duration(left)} unless it is `
        + "used (open it, or run something)";
    }
  }

  tick() {
    for (const { job, node } of this.jobs.values()) {
      if (job.started_at && !job.ended_at) this.fillClock(node, job);
    }
  }

  async cancel(job, button) {
    button.disabled = true;
    try {
      const { body } = await api(`/api/v1/jobs/${job.id}/cancel`, { method: "POST" });
      this.update(body, true);
    } catch (error) {
      button.disabled = false;
      this.onError(error);
    }
  }
}

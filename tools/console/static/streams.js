// Event streams and their consumers (pending, redelivered), and the dead letters: each with
// the error that put it there and a button that sends it to its subject again.

import { getJSON, postJSON } from "./api.js";
import { fill, h, table } from "./dom.js";
import { clock, toEpochMs } from "./format.js";

const REFRESH_MS = 5000;

function bytes(n) {
  const v = Number(n) || 0;
  if (v < 1024) return `${v} B`;
  if (v < 1024 ** 2) return `${(v / 1024).toFixed(1)} KiB`;
  if (v < 1024 ** 3) return `${(v / 1024 ** 2).toFixed(1)} MiB`;
  return `${(v / 1024 ** 3).toFixed(2)} GiB`;
}

const count = (n) => Number(n || 0).toLocaleString();

export class StreamsView {
  constructor(panel, ctx) {
    this.panel = panel;
    this.ctx = ctx;
    this.timer = null;
    this.streams = h("div", { id: "streams-body" });
    this.letters = h("div", { id: "deadletters-body" });
    this.updated = h("span", { class: "meta" });
    fill(panel,
      h("div", { class: "toolbar" },
        h("h2", {}, "Event streams"), this.updated,
        h("button", { type: "button", class: "secondary", onclick: () => this.refresh() }, "Refresh")),
      this.streams,
      h("div", { class: "toolbar" }, h("h2", { id: "deadletters-title" }, "Dead letters")),
      this.letters);
  }

  shown() {
    this.refresh();
    clearInterval(this.timer);
    this.timer = setInterval(() => this.refresh(), REFRESH_MS);
  }

  hidden() {
    clearInterval(this.timer);
    this.timer = null;
  }

  async refresh() {
    // Inside a dead letter's row the focus would be lost on a rebuild: wait for the next round.
    if (this.letters.contains(document.activeElement) && document.activeElement.tagName === "BUTTON") return;
    const [streams, letters] = await Promise.allSettled([getJSON("/api/streams"), getJSON("/api/deadletters?limit=50")]);
    this.ctx.guard("streams", () => this.renderStreams(streams));
    this.ctx.guard("dead letters", () => this.renderLetters(letters));
    fill(this.updated, `updated ${clock(Date.now())}`);
  }

  unavailable(node, what, reason) {
    fill(node, h("p", { class: "notice bad" }, `${what} not available: ${reason.message}`));
  }

  renderStreams(result) {
    if (result.status === "rejected") return this.unavailable(this.streams, "Streams are", result.reason);
    const streams = Array.isArray(result.value) ? result.value : [];
    if (!streams.length) {
      fill(this.streams, h("p", { class: "empty" }, "No stream exists yet: the first event published creates it."));
      return;
    }
    fill(this.streams, streams.map((st) => h("article", { class: "card", dataset: { stream: st.stream } },
      h("header", {}, h("h3", {}, st.stream),
        h("span", { class: "meta" }, `${count(st.messages)} messages · ${bytes(st.bytes)}`)),
      (st.consumers || []).length
        ? table(null,
          [{ label: "Consumer" }, { label: "Pending", num: true }, { label: "Awaiting ack", num: true }, { label: "Redelivered", num: true }],
          st.consumers.map((c) => h("tr", { dataset: { consumer: c.name } },
            h("td", { class: "mono" }, c.name),
            h("td", { class: `num ${c.pending > 0 ? "warn-text" : ""}` }, count(c.pending)),
            h("td", { class: "num" }, count(c.ack_pending)),
            h("td", { class: `num ${c.redelivered > 0 ? "warn-text" : ""}` }, count(c.redelivered)))),
          { class: "consumers" })
        : h("p", { class: "empty" }, "No consumer reads this stream."))));
  }

  renderLetters(result) {
    if (result.status === "rejected") return this.unavailable(this.letters, "Dead letters are", result.reason);
    const letters = Array.isArray(result.value) ? result.value : [];
    if (!letters.length) {
      fill(this.letters, h("p", { class: "empty" }, "No dead letters: every event was handled."));
      return;
    }
    const rows = letters.map((d) => h("tr", { dataset: { sequence: d.sequence } },
      h("td", { class: "num mono" }, `#${d.sequence}`),
      h("td", {}, clock(toEpochMs(d.time))),
      h("td", { class: "mono small" }, d.subject),
      h("td", { class: "mono small" }, d.consumer || "–"),
      h("td", { class: "num" }, count(d.deliveries)),
      h("td", {}, d.reason || "–", h("div", { class: "error-text" }, d.error || "")),
      h("td", { class: "mono small", title: d.event_id }, String(d.event_id || "–").slice(0, 13)),
      h("td", {}, h("button", {
        type: "button", class: "secondary", "aria-label": `Redrive dead letter ${d.sequence}`,
        onclick: (e) => this.redrive(d, e.currentTarget),
      }, "Redrive"))));
    fill(this.letters, table(`${letters.length} dead letter${letters.length === 1 ? "" : "s"}, newest first`,
      [{ label: "Seq", num: true }, { label: "Time" }, { label: "Subject" }, { label: "Consumer" }, { label: "Deliveries", num: true },
        { label: "Why" }, { label: "Event id" }, { label: "Action" }], rows, { class: "deadletters" }));
  }

  async redrive(letter, button) {
    button.disabled = true;
    button.textContent = "Redriving…";
    try {
      await postJSON(`/api/deadletters/${encodeURIComponent(letter.sequence)}/redrive`);
      button.textContent = "Redriven";
      this.ctx.notify(`Dead letter #${letter.sequence} (${letter.subject}) was sent to its subject again.`);
    } catch (err) {
      button.disabled = false;
      button.textContent = "Redrive";
      this.ctx.report(`redrive of #${letter.sequence}: ${err.message}`);
    }
    button.blur();
    setTimeout(() => this.refresh(), 800);
  }
}

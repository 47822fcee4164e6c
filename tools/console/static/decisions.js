// What the mesh decided about instances as it happened: ejections, readmissions, retry budget
// refusals, draining and unreachable instances (svc.mesh), newest first.

import { fill, h, table } from "./dom.js";
import { clock, shortService, toEpochMs } from "./format.js";

const SHOWN = 200;

export function kindName(kind) {
  return String(kind || "unknown").toLowerCase().replace(/^decision_kind_/, "").replace(/_/g, " ");
}

function tone(kind) {
  const k = kindName(kind);
  if (k === "ejected" || k === "unreachable") return "bad";
  if (k === "readmitted") return "ok";
  return "warn";
}

export class DecisionsView {
  constructor(panel) {
    this.panel = panel;
    this.kind = "";
    this.select = h("select", { id: "decisions-kind", onchange: (e) => { this.kind = e.target.value; this.onchange?.(); } });
    this.counts = h("p", { class: "summary" });
    this.body = h("div", { id: "decisions-body" });
    fill(panel,
      h("div", { class: "toolbar" }, h("h2", {}, "Mesh decisions"),
        h("label", { class: "filter" }, h("span", {}, "Kind"), this.select)),
      this.counts, this.body);
  }

  render(state) {
    const kinds = new Map();
    for (const d of state.decisions) kinds.set(kindName(d.kind), (kinds.get(kindName(d.kind)) || 0) + 1);
    const options = [h("option", { value: "" }, `all (${state.decisions.length})`),
      ...[...kinds].sort().map(([k, n]) => h("option", { value: k }, `${k} (${n})`))];
    if (this.select.options.length !== options.length || [...this.select.options].some((o, i) => o.textContent !== options[i].textContent)) {
      fill(this.select, options);
      this.select.value = kinds.has(this.kind) ? this.kind : "";
    }
    fill(this.counts, state.decisions.length
      ? `${state.decisions.length} decisions since this page opened${state.decisionsDropped ? ` (the oldest ${state.decisionsDropped} are no longer kept)` : ""}.`
      : "");
    const shown = state.decisions.filter((d) => !this.kind || kindName(d.kind) === this.kind).slice(0, SHOWN);
    if (!shown.length) {
      fill(this.body, h("p", { class: "empty" }, state.nats && !state.nats.connected
        ? "No decisions can arrive: the console cannot reach NATS."
        : "No decision yet. Ejections, readmissions, retry budget refusals, draining and unreachable instances appear here as the mesh decides them."));
      return;
    }
    const rows = shown.map((d) => h("tr", { class: `tone-${tone(d.kind)}` },
      h("td", {}, clock(toEpochMs(d.time) ?? d.receivedAt)),
      h("td", {}, h("span", { class: `badge ${tone(d.kind)}` }, kindName(d.kind))),
      h("td", {}, d.deployment || "–"),
      h("td", { title: d.service }, shortService(d.service)),
      h("td", { class: "mono small", title: d.instance }, `${d.instance || ""} ${d.address || ""}`.trim() || "–"),
      h("td", {}, d.reason || "–")));
    fill(this.body, table(null,
      [{ label: "Time" }, { label: "Decision" }, { label: "Decided by" }, { label: "Service" }, { label: "Instance" }, { label: "Why" }],
      rows, { class: "decisions" }));
  }
}

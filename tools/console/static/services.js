// Services and their instances, as the registry has them: one card per gRPC service, a row
// per instance, leases counting down between registry events.

import { fill, h, table } from "./dom.js";
import { ago, clock, shortService } from "./format.js";
import { instanceKey } from "./state.js";

const COLUMNS = [
  { label: "Instance" },
  { label: "Address" },
  { label: "Version" },
  { label: "Zone" },
  { label: "Identity" },
  { label: "Lease left", num: true },
  { label: "Health" },
  { label: "Rotation" },
];

export function healthBadge(health) {
  const value = String(health || "UNKNOWN").toUpperCase();
  const tone = value === "SERVING" ? "ok" : value === "NOT_SERVING" ? "bad" : "warn";
  return h("span", { class: `badge ${tone}` }, value.replace("_", " ").toLowerCase());
}

function rotation(instance) {
  if (instance.ejected) return h("span", { class: "badge bad" }, "ejected");
  if (instance.draining) return h("span", { class: "badge warn" }, "draining");
  return h("span", { class: "badge quiet" }, "in rotation");
}

export function leaseText(left) {
  if (left === null) return "–";
  return `${Math.ceil(left)} s`;
}

function matches(instance, filter) {
  if (!filter) return true;
  const hay = [instance.service, instance.deployment, instance.address, instance.version,
    instance.zone, instance.identity, instance.instance_id].join(" ").toLowerCase();
  return filter.split(/\s+/).every((word) => hay.includes(word));
}

export class ServicesView {
  constructor(panel) {
    this.panel = panel;
    this.filter = "";
    const input = h("input", {
      type: "search", id: "services-filter", placeholder: "service, deployment, address, zone…",
      oninput: (e) => { this.filter = e.target.value.trim().toLowerCase(); this.onchange?.(); },
    });
    this.summary = h("p", { class: "summary", id: "services-summary" });
    this.cards = h("div", { class: "cards", id: "services-cards" });
    this.departed = h("section", { class: "departed", "aria-labelledby": "departed-title" });
    fill(panel,
      h("div", { class: "toolbar" },
        h("h2", { id: "services-title" }, "Services and instances"),
        h("label", { class: "filter" }, h("span", {}, "Filter"), input)),
      this.summary, this.cards, this.departed);
  }

  render(state) {
    const now = Date.now();
    if (!state.instancesSeen) {
      fill(this.summary, "Waiting for the registry…");
      fill(this.cards);
      fill(this.departed);
      return;
    }
    const byService = new Map();
    for (const i of state.instances) {
      if (!byService.has(i.service)) byService.set(i.service, []);
      byService.get(i.service).push(i);
    }
    const serving = state.instances.filter((i) => String(i.health).toUpperCase() === "SERVING").length;
    fill(this.summary,
      h("strong", {}, String(byService.size)), byService.size === 1 ? " service, " : " services, ",
      h("strong", {}, String(state.instances.length)),
      state.instances.length === 1 ? " instance" : " instances",
      ` (${serving} serving)`,
      state.vanished.size ? `, ${state.vanished.size} vanished` : "");

    const cards = [];
    for (const service of [...byService.keys()].sort()) {
      const list = byService.get(service).filter((i) => matches(i, this.filter));
      if (!list.length) continue;
      list.sort((a, b) => String(a.address).localeCompare(String(b.address)));
      cards.push(this.card(service, list, state, now));
    }
    for (const [service, gone] of [...state.vanished].sort()) {
      if (this.filter && !matches({ service, deployment: gone.deployment }, this.filter)) continue;
      cards.push(h("article", { class: "card vanished", dataset: { service } },
        h("header", {},
          h("h3", { title: service }, shortService(service), " ", h("span", { class: "package" }, service)),
          h("span", { class: "badge bad" }, "vanished")),
        h("p", { class: "notice" },
          `No instance is registered any more (the last left at ${clock(gone.at)}, ${ago(gone.at, now)}). `,
          "Calls to it fail until one registers again.")));
    }
    if (!cards.length) {
      cards.push(h("p", { class: "empty" }, state.instances.length
        ? `Nothing matches “${this.filter}”.`
        : "No service is registered: the registry is empty."));
    }
    fill(this.cards, cards);
    this.renderDeparted(state, now);
  }

  card(service, list, state, now) {
    const versions = [...new Set(list.map((i) => i.version).filter(Boolean))];
    const deployments = [...new Set(list.map((i) => i.deployment).filter(Boolean))];
    const healthy = list.filter((i) => String(i.health).toUpperCase() === "SERVING" && !i.ejected).length;
    const tone = healthy === list.length ? "ok" : healthy === 0 ? "bad" : "warn";
    const rows = list.map((i) => {
      const left = state.leaseLeft(i, now);
      return h("tr", { dataset: { instanceId: i.instance_id, key: instanceKey(i) } },
        h("td", { class: "mono" }, i.instance_id),
        h("td", { class: "mono" }, i.address),
        h("td", {}, i.version || "–"),
        h("td", {}, i.zone || "–"),
        h("td", { class: "mono small", title: i.identity }, i.identity || "–"),
        h("td", { class: "num", dataset: { lease: "" } }, leaseText(left)),
        h("td", {}, healthBadge(i.health)),
        h("td", {}, rotation(i)));
    });
    return h("article", { class: `card tone-${tone}`, dataset: { service } },
      h("header", {},
        h("h3", { title: service }, shortService(service), " ", h("span", { class: "package" }, service)),
        h("span", { class: `badge ${tone}` }, `${healthy}/${list.length} healthy`),
        h("span", { class: "meta" }, [
          deployments.length ? `deployment ${deployments.join(", ")}` : null,
          versions.length ? `version ${versions.join(", ")}` : null,
        ].filter(Boolean).join(" · "))),
      table(null, COLUMNS, rows, { class: "instances" }));
  }

  renderDeparted(state, now) {
    const recent = state.departed.filter((d) => now - d.at < 5 * 60_000);
    if (!recent.length) {
      fill(this.departed);
      return;
    }
    fill(this.departed,
      h("h3", { id: "departed-title" }, "Recently left"),
      h("ul", {}, recent.map((d) => h("li", { dataset: { instanceId: d.instance.instance_id } },
        h("span", { class: "mono" }, d.instance.instance_id), " ",
        `${d.instance.deployment} · ${shortService(d.instance.service)} · `,
        h("span", { class: "mono" }, d.instance.address), ` — left ${ago(d.at, now)}`))));
  }

  /** Between registry events: only the lease cells change. */
  tick(state) {
    const now = Date.now();
    const byKey = new Map(state.instances.map((i) => [instanceKey(i), i]));
    for (const row of this.cards.querySelectorAll("tr[data-key]")) {
      const instance = byKey.get(row.dataset.key);
      const cell = row.querySelector("[data-lease]");
      if (!instance || !cell) continue;
      const left = state.leaseLeft(instance, now);
      cell.textContent = leaseText(left);
    }
  }
}

// Requests per second, error rate and latency per service and method over the stats window
// (from svc.trace), with a one-minute trend line.

import { fill, h, s, table } from "./dom.js";
import { millis, percent, rate, shortService } from "./format.js";

export function errorTone(fraction) {
  if (!fraction) return "";
  if (fraction >= 0.05) return "bad-text";
  if (fraction >= 0.01) return "warn-text";
  return "";
}

function sparkline(series) {
  const width = 90;
  const height = 22;
  if (!series || series.length < 2) return h("span", { class: "muted" }, "–");
  const max = Math.max(...series, 0.001);
  const step = width / (series.length - 1);
  const points = series.map((v, i) => `${(i * step).toFixed(1)},${(height - 2 - (v / max) * (height - 4)).toFixed(1)}`);
  return s("svg", { class: "spark", width, height, viewBox: `0 0 ${width} ${height}`, "aria-hidden": "true" },
    s("polyline", { points: points.join(" "), fill: "none" }));
}

const COLUMNS = [
  { label: "Method" },
  { label: "Requests/s", num: true },
  { label: "Errors", num: true },
  { label: "p50", num: true },
  { label: "p99", num: true },
  { label: "Calls", num: true },
  { label: "Last minute" },
];

export class TrafficView {
  constructor(panel) {
    this.panel = panel;
    this.body = h("div", { id: "traffic-body" });
    fill(panel, h("div", { class: "toolbar" }, h("h2", {}, "Traffic by service and method")),
      this.body);
  }

  render(state) {
    if (!state.stats) {
      fill(this.body, h("p", { class: "empty" }, state.nats && !state.nats.connected
        ? "No traffic figures: the console cannot reach NATS, where the calls are reported."
        : "Waiting for the first figures…"));
      return;
    }
    const { methods, window_s: windowS, dropped } = state.stats;
    const byService = new Map();
    for (const m of methods) {
      if (!byService.has(m.service)) byService.set(m.service, []);
      byService.get(m.service).push(m);
    }
    const rows = [];
    for (const service of [...byService.keys()].sort()) {
      const list = byService.get(service).sort((a, b) => String(a.method).localeCompare(String(b.method)));
      const total = list.reduce((sum, m) => sum + (Number(m.rps) || 0), 0);
      rows.push(h("tr", { class: "group", dataset: { service } },
        h("th", { scope: "rowgroup", colspan: 7, title: service },
          shortService(service), " ", h("span", { class: "package" }, service),
          h("span", { class: "meta" }, ` ${rate(total)} req/s`))));
      for (const m of list) {
        rows.push(h("tr", { dataset: { method: `${service}/${m.method}` } },
          h("td", { class: "mono" }, m.method),
          h("td", { class: "num" }, rate(m.rps)),
          h("td", { class: `num ${errorTone(m.error_rate)}` }, percent(m.error_rate)),
          h("td", { class: "num" }, millis(m.p50_ms)),
          h("td", { class: "num" }, millis(m.p99_ms)),
          h("td", { class: "num" }, Number(m.count || 0).toLocaleString()),
          h("td", {}, sparkline(state.history.get(`${service}/${m.method}`)))));
      }
    }
    const note = h("p", { class: "summary" },
      `Over the last ${windowS} s, from every hop's call records.`,
      dropped ? h("span", { class: "warn-text" }, ` ${Number(dropped).toLocaleString()} records were dropped by their senders (NATS slow or down): the figures are low.`) : null);
    if (!rows.length) {
      const why = state.nats && !state.nats.connected
        ? "The console cannot reach NATS: no call records arrive."
        : `No calls in the last ${windowS} s.`;
      fill(this.body, note, h("p", { class: "empty" }, why));
      return;
    }
    fill(this.body, note, table(null, COLUMNS, rows, { class: "traffic" }));
  }
}

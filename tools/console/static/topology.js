// Who calls whom: deployments (and the gateway) as boxes in layers from the callers on the
// left to the callees on the right, an arrow per edge with its rate and error rate.

import { getJSON } from "./api.js";
import { fill, h, s, table } from "./dom.js";
import { percent, rate } from "./format.js";
import { errorTone } from "./traffic.js";

const NODE_W = 168;
const NODE_H = 52;
const COL_GAP = 290;
const ROW_GAP = 34;
const PAD = 28;

/** Layers by longest path from the callers; cycles are cut after as many rounds as nodes. */
export function layers(nodes, edges) {
  const layer = new Map(nodes.map((n) => [n, 0]));
  for (let round = 0; round < nodes.length; round++) {
    let moved = false;
    for (const e of edges) {
      if (e.caller === e.callee) continue;
      const want = layer.get(e.caller) + 1;
      if (want > layer.get(e.callee) && want < nodes.length) {
        layer.set(e.callee, want);
        moved = true;
      }
    }
    if (!moved) break;
  }
  return layer;
}

/** The y of the gap between rows (or above the first, below the last) nearest to `y`. */
function gapNear(y, rows) {
  let best = PAD + 18 - ROW_GAP / 2;
  for (let r = 0; r <= Math.max(rows, 1); r++) {
    const gap = PAD + 18 + r * (NODE_H + ROW_GAP) - ROW_GAP / 2;
    if (Math.abs(gap - y) < Math.abs(best - y)) best = gap;
  }
  return best;
}

/** A path through `points` with horizontal tangents at each: smooth S-bends between them. */
function smoothPath(points) {
  let d = `M${points[0][0]},${points[0][1]}`;
  for (let i = 1; i < points.length; i++) {
    const [xa, ya] = points[i - 1];
    const [xb, yb] = points[i];
    if (ya === yb) {
      d += ` L${xb},${yb}`;
      continue;
    }
    const bend = (xb - xa) / 2;
    d += ` C${xa + bend},${ya} ${xb - bend},${yb} ${xb},${yb}`;
  }
  return d;
}

function edgeTone(fraction) {
  if (fraction >= 0.05) return "bad";
  if (fraction >= 0.01) return "warn";
  return "ok";
}

export class TopologyView {
  constructor(panel) {
    this.panel = panel;
    this.figure = h("figure", { class: "topology", id: "topology-figure" });
    this.edges = h("div", { id: "topology-edges" });
    this.declared = h("div", { id: "topology-declared" }, h("p", { class: "empty" }, "Reading the manifests…"));
    fill(panel,
      h("div", { class: "toolbar" }, h("h2", {}, "Topology")),
      h("p", { class: "summary" }, "Who called whom over the stats window: arrows go from caller to callee, labelled with requests per second and error rate."),
      this.figure, this.edges,
      h("h3", {}, "Events, as the manifests declare them"),
      h("p", { class: "summary" }, "Who publishes each event type and who consumes it (services/*/service.toml), whether or not anything flowed."),
      this.declared);
  }

  /** The declared event topology, read once when the view is first shown. */
  async shown() {
    if (this.manifests) return;
    try {
      this.manifests = await getJSON("/api/manifests");
    } catch (err) {
      fill(this.declared, h("p", { class: "empty" }, `The manifests cannot be shown: ${err.message}`));
      return;
    }
    const loose = (names) => (names.length ? names.join(", ") : h("em", {}, "none declared"));
    const rows = this.manifests.events.map((e) => h("tr", {},
      h("td", {}, h("code", {}, e.type)), h("td", {}, loose(e.publishers)), h("td", {}, loose(e.subscribers))));
    fill(this.declared, rows.length
      ? table("Event types", [{ label: "Event type" }, { label: "Published by" }, { label: "Consumed by" }], rows, { class: "events-table" })
      : h("p", { class: "empty" }, "No manifest declares an event."));
  }

  graph(state) {
    const deployments = state.deployments();
    const edges = state.stats ? state.stats.edges.filter((e) => e.caller && e.callee) : [];
    const names = new Set(["gateway", ...deployments.keys()]);
    for (const e of edges) { names.add(e.caller); names.add(e.callee); }
    const connected = new Set(edges.flatMap((e) => [e.caller, e.callee]));
    const nodes = [...names].sort((a, b) => (a === "gateway" ? -1 : b === "gateway" ? 1 : a.localeCompare(b)));
    return { nodes, edges, deployments, connected };
  }

  render(state) {
    const { nodes, edges, deployments, connected } = this.graph(state);
    const layer = layers(nodes.filter((n) => connected.has(n) || n === "gateway"), edges);
    const deepest = Math.max(0, ...layer.values());
    // Deployments nobody called and that called nobody: a column of their own at the right.
    const idle = nodes.filter((n) => !layer.has(n));
    const columns = [];
    for (const [node, l] of layer) (columns[l] ||= []).push(node);
    if (idle.length) columns[deepest + 1] = idle;

    // Order each column by where its callers sit, to keep arrows from crossing.
    const position = new Map();
    columns.forEach((column, c) => {
      if (!column) return;
      if (c > 0) {
        const weight = (n) => {
          const ys = edges.filter((e) => e.callee === n && position.has(e.caller)).map((e) => position.get(e.caller).y);
          return ys.length ? ys.reduce((a, b) => a + b, 0) / ys.length : Infinity;
        };
        column.sort((a, b) => weight(a) - weight(b) || a.localeCompare(b));
      }
      column.forEach((n, r) => position.set(n, { x: PAD + c * COL_GAP, y: PAD + 18 + r * (NODE_H + ROW_GAP), column: c }));
    });
    const tallest = Math.max(1, ...columns.filter(Boolean).map((c) => c.length));
    const width = PAD * 2 + (columns.length - 1) * COL_GAP + NODE_W;
    const height = PAD * 2 + 18 + tallest * NODE_H + (tallest - 1) * ROW_GAP + 24;

    const svg = s("svg", {
      viewBox: `0 0 ${width} ${height}`, width: "100%", role: "img",
      "aria-labelledby": "topology-title topology-desc", class: "graph",
      style: `max-width:${width}px`,
    },
    s("title", { id: "topology-title" }, "Topology of the mesh"),
    s("desc", { id: "topology-desc" }, `${nodes.length} nodes and ${edges.length} edges; the same edges are listed in the table below.`),
    s("defs", {}, ["ok", "warn", "bad"].map((tone) => s("marker", {
      id: `arrow-${tone}`, viewBox: "0 0 10 10", refX: 9, refY: 5, markerWidth: 9, markerHeight: 9, markerUnits: "userSpaceOnUse", orient: "auto-start-reverse",
    }, s("path", { d: "M0,0 L10,5 L0,10 z", class: `arrowhead ${tone}` })))));
    if (idle.length && columns.length > 1) {
      const x = PAD + (columns.length - 1) * COL_GAP;
      svg.append(s("text", { x, y: PAD, class: "column-label" }, "no calls this minute"));
    }
    const edgeLayer = s("g", { class: "edges" });
    const labelLayer = s("g", { class: "edge-labels" });
    const placed = [];
    for (const e of edges) {
      const a = position.get(e.caller);
      const b = position.get(e.callee);
      if (!a || !b) continue;
      const tone = edgeTone(Number(e.error_rate) || 0);
      const strokeWidth = 1.2 + Math.min(5, Math.log10(1 + (Number(e.rps) || 0)) * 1.8);
      let d;
      let mid;
      if (e.caller === e.callee) {
        const x = a.x + NODE_W - 30;
        d = `M${x},${a.y} C${x},${a.y - 40} ${x + 40},${a.y - 40} ${x + 30},${a.y}`;
        mid = { x: x + 20, y: a.y - 34 };
      } else if (b.column > a.column) {
        // Left to right; past the columns in between along the gap between two rows nearest
        // the straight line, so the arrow never runs through a box.
        const x1 = a.x + NODE_W;
        const y1 = a.y + NODE_H / 2;
        const x2 = b.x - 2;
        const y2 = b.y + NODE_H / 2;
        const points = [[x1, y1]];
        for (let c = a.column + 1; c < b.column; c++) {
          const cx = PAD + c * COL_GAP;
          const straight = y1 + ((y2 - y1) * (cx + NODE_W / 2 - x1)) / (x2 - x1);
          const lane = gapNear(straight, columns[c] ? columns[c].length : 0);
          points.push([cx - 10, lane], [cx + NODE_W + 10, lane]);
        }
        points.push([x2, y2]);
        d = smoothPath(points);
        const [m1, m2] = points.length > 2 ? [points[1], points[2]] : [points[0], points[1]];
        mid = { x: (m1[0] + m2[0]) / 2, y: (m1[1] + m2[1]) / 2 };
      } else {
        // A call back to an earlier (or the same) column: around below both boxes.
        const x1 = a.x + NODE_W / 2;
        const y1 = a.y + NODE_H;
        const x2 = b.x + NODE_W / 2 + 12;
        const y2 = b.y + NODE_H + 2;
        const low = Math.max(y1, y2) + 36;
        d = `M${x1},${y1} C${x1},${low} ${x2},${low} ${x2},${y2}`;
        mid = { x: (x1 + x2) / 2, y: low - 8 };
      }
      edgeLayer.append(s("path", {
        d, class: `edge ${tone}`, "stroke-width": strokeWidth.toFixed(2), "marker-end": `url(#arrow-${tone})`,
        "data-edge": `${e.caller}->${e.callee}`,
      }, s("title", {}, `${e.caller} → ${e.callee}: ${rate(e.rps)} req/s, ${percent(e.error_rate)} errors, ${e.count ?? 0} calls`)));
      const text = `${rate(e.rps)}/s · ${percent(e.error_rate)}`;
      const w = text.length * 6.6 + 12;
      // Labels must not cover one another: step down past any already placed.
      let y = mid.y;
      while (placed.some((b) => Math.abs(b.x - mid.x) < (b.w + w) / 2 + 4 && Math.abs(b.y - y) < 22)) y += 22;
      placed.push({ x: mid.x, y, w });
      labelLayer.append(s("g", { class: `edge-label ${tone}` },
        s("rect", { x: mid.x - w / 2, y: y - 10, width: w, height: 20, rx: 10 }),
        s("text", { x: mid.x, y: y + 4, "text-anchor": "middle" }, text)));
    }
    svg.append(edgeLayer, labelLayer);

    const inbound = new Map();
    for (const e of edges) inbound.set(e.callee, (inbound.get(e.callee) || 0) + (Number(e.rps) || 0));
    for (const n of nodes) {
      const p = position.get(n);
      if (!p) continue;
      const list = deployments.get(n) || [];
      // The gateway, and callers the registry does not list (REST clients, operators' tools),
      // are where calls come from; a deployment without instances that is called has vanished.
      const caller = n === "gateway" || (list.length === 0 && !inbound.has(n));
      const serving = list.filter((i) => String(i.health).toUpperCase() === "SERVING" && !i.ejected).length;
      const tone = caller ? "edge-node" : list.length === 0 ? "gone" : serving === list.length ? "ok" : serving ? "warn" : "bad";
      const detail = n === "gateway" ? `REST in · ${rate(inbound.get(n) || 0)}/s`
        : caller ? (n === "client" ? "callers outside the mesh" : "caller, not registered")
          : list.length === 0 ? "no instances: vanished" : `${serving}/${list.length} healthy · ${rate(inbound.get(n) || 0)}/s in`;
      svg.append(s("g", { class: `node ${tone}`, "data-node": n, transform: `translate(${p.x},${p.y})` },
        s("title", {}, `${n}: ${detail}`),
        s("rect", { width: NODE_W, height: NODE_H, rx: 10 }),
        s("text", { x: 14, y: 22, class: "node-name" }, n),
        s("text", { x: 14, y: 40, class: "node-detail" }, detail)));
    }
    fill(this.figure, svg);

    const rows = edges
      .slice()
      .sort((a, b) => (Number(b.rps) || 0) - (Number(a.rps) || 0))
      .map((e) => h("tr", {},
        h("td", {}, e.caller), h("td", {}, e.callee),
        h("td", { class: "num" }, rate(e.rps)),
        h("td", { class: `num ${errorTone(e.error_rate)}` }, percent(e.error_rate)),
        h("td", { class: "num" }, Number(e.count || 0).toLocaleString())));
    fill(this.edges, rows.length
      ? table("Calls between deployments", [{ label: "Caller" }, { label: "Callee" }, { label: "Requests/s", num: true }, { label: "Errors", num: true }, { label: "Calls", num: true }], rows, { class: "edges-table" })
      : h("p", { class: "empty" }, state.nats && !state.nats.connected
        ? "No calls known: the console cannot reach NATS."
        : "No calls between deployments in the stats window."));
  }
}

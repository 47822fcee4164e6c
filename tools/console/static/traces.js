// Recent traces, and one trace as a waterfall: the REST request at the gateway, each hop's
// client and server side, the events it published and the handlers that took them.

import { getJSON } from "./api.js";
import { fill, h } from "./dom.js";
import { clock, grpcCode, nanos, shortService, TRACE_ID, toEpochMs, traceIdFrom } from "./format.js";

const REFRESH_MS = 5000;

function side(span) {
  return String(span.side || "").toLowerCase().replace(/^side_/, "") || "span";
}

function failed(span) {
  if (span.http_status) return Number(span.http_status) >= 500 || (side(span) === "gateway" && Number(span.http_status) >= 400 && Number(span.code) !== 0);
  return Number(span.code) !== 0 && String(span.code).toUpperCase() !== "OK";
}

function outcome(span) {
  if (side(span) === "gateway" && span.http_status) return `${span.http_status}`;
  return grpcCode(span.code ?? 0);
}

function spanLabel(span) {
  const kind = side(span);
  if (kind === "gateway") {
    return [h("strong", {}, `${span.http_method || ""} ${span.http_route || ""}`.trim() || "gateway"),
      span.service ? h("span", { class: "muted" }, ` → ${shortService(span.service)}/${span.method}`) : null];
  }
  if (kind === "handler") {
    return [h("strong", {}, span.deployment || "?"), " handles ", h("span", { class: "mono" }, shortService(span.service)),
      h("span", { class: "muted" }, ` (consumer ${span.method})`)];
  }
  const rpc = `${shortService(span.service)}/${span.method}`;
  const extra = [];
  if (Number(span.attempt) > 0) extra.push(`attempt ${Number(span.attempt) + 1}`);
  if (span.hedge) extra.push("hedge");
  return [h("strong", {}, span.deployment || "?"), " ", kind === "client" ? "calls " : "serves ",
    h("span", { class: "mono" }, rpc), extra.length ? h("span", { class: "muted" }, ` (${extra.join(", ")})`) : null];
}

/** A span's duration and outcome beside its bar: after it, before it when the bar ends near
 * the right edge, or inside it when there is room on neither side. */
function figures(left, width, text) {
  if (left + width <= 72) return h("span", { class: "duration", style: `left:${left + width}%` }, text);
  if (left >= 22) return h("span", { class: "duration before", style: `right:${100 - left}%` }, text);
  return h("span", { class: "duration inside", style: `left:${left}%;width:${width}%` }, text);
}

/** Rows in reading order: each root span with its children depth first; events and other roots
 * in between by time, so a trace reads REST -> hops -> event -> handler. */
export function waterfallRows(trace) {
  const spans = Array.isArray(trace.spans) ? trace.spans : [];
  const events = Array.isArray(trace.events) ? trace.events : [];
  const ids = new Set(spans.map((sp) => sp.span_id));
  // A handler is drawn under the event it took (its service is the event's type), after it.
  const eventTypes = new Set(events.map((ev) => ev.type));
  const handlers = new Map();
  const children = new Map();
  const roots = [];
  for (const sp of spans) {
    if (side(sp) === "handler" && eventTypes.has(sp.service)) {
      if (!handlers.has(sp.service)) handlers.set(sp.service, []);
      handlers.get(sp.service).push(sp);
      continue;
    }
    if (sp.parent_span_id && ids.has(sp.parent_span_id) && sp.parent_span_id !== sp.span_id) {
      if (!children.has(sp.parent_span_id)) children.set(sp.parent_span_id, []);
      children.get(sp.parent_span_id).push(sp);
    } else roots.push(sp);
  }
  const startMs = (sp) => Number(sp.start_unix_nanos) / 1e6;
  const top = [
    ...roots.map((sp) => ({ kind: "span", at: startMs(sp), span: sp })),
    ...events.map((ev) => ({ kind: "event", at: toEpochMs(ev.time) ?? Infinity, event: ev })),
  ].sort((a, b) => a.at - b.at);
  const rows = [];
  const seen = new Set();
  const walk = (sp, depth) => {
    if (seen.has(sp.span_id)) return;
    seen.add(sp.span_id);
    rows.push({ kind: "span", depth, span: sp, at: startMs(sp), ms: Number(sp.duration_nanos) / 1e6 });
    for (const child of (children.get(sp.span_id) || []).sort((a, b) => startMs(a) - startMs(b))) walk(child, depth + 1);
  };
  for (const item of top) {
    if (item.kind === "span") walk(item.span, 0);
    else {
      rows.push({ kind: "event", depth: 0, event: item.event, at: item.at, ms: 0 });
      const took = handlers.get(item.event.type) || [];
      handlers.delete(item.event.type); // one event of a type in a trace: its handlers once
      for (const sp of took.sort((a, b) => startMs(a) - startMs(b))) walk(sp, 1);
    }
  }
  return rows;
}

export class TracesView {
  constructor(panel, ctx) {
    this.panel = panel;
    this.ctx = ctx;
    this.current = null;
    this.timer = null;
    this.input = h("input", {
      id: "trace-search", type: "search", autocomplete: "off", spellcheck: "false",
      placeholder: "32 hex digits, or a whole traceparent header",
      "aria-describedby": "trace-search-help",
    });
    const form = h("form", {
      class: "search", role: "search",
      onsubmit: (e) => { e.preventDefault(); this.ctx.navigate(`traces/${traceIdFrom(this.input.value)}`); },
    },
    h("label", { for: "trace-search" }, "Trace id"), this.input,
    h("button", { type: "submit" }, "Open trace"));
    this.detail = h("section", { id: "trace-detail", class: "trace-detail", "aria-live": "polite" });
    this.listStatus = h("span", { class: "meta", id: "traces-updated" });
    this.list = h("div", { id: "traces-list" });
    fill(panel,
      h("div", { class: "toolbar" }, h("h2", {}, "Traces"), form),
      h("p", { id: "trace-search-help", class: "summary" }, "Find a request by the trace id the gateway returned in its traceparent header."),
      this.detail,
      h("section", { "aria-labelledby": "recent-traces-title" },
        h("div", { class: "toolbar" },
          h("h3", { id: "recent-traces-title" }, "Recent traces"), this.listStatus,
          h("button", { type: "button", class: "secondary", onclick: () => this.refresh() }, "Refresh")),
        this.list));
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
    try {
      const traces = await getJSON("/api/traces?limit=50");
      this.renderList(Array.isArray(traces) ? traces : []);
      fill(this.listStatus, `updated ${clock(Date.now())}`);
    } catch (err) {
      fill(this.list, h("p", { class: "notice bad" }, `Recent traces are not available: ${err.message}`));
      this.ctx.report(`recent traces: ${err.message}`);
    }
  }

  renderList(traces) {
    if (!traces.length) {
      fill(this.list, h("p", { class: "empty" }, "No trace has been recorded yet: traces appear as requests go through the mesh (sampled by MESH_TRACE_SAMPLE)."));
      return;
    }
    const focused = document.activeElement?.dataset?.traceId;
    const rows = traces.map((t) => h("tr", { dataset: { traceId: t.trace_id }, class: t.trace_id === this.current ? "selected" : null },
      h("td", {}, clock(toEpochMs(t.start_unix_nanos))),
      h("td", {}, h("a", { href: `#traces/${t.trace_id}`, class: "mono", dataset: { traceId: t.trace_id } }, t.root || t.trace_id)),
      h("td", { class: "num" }, nanos(t.duration_nanos)),
      h("td", { class: "num" }, String(t.spans ?? "–")),
      h("td", {}, t.error ? h("span", { class: "badge bad" }, "error") : h("span", { class: "badge ok" }, "ok")),
      h("td", { class: "mono small muted" }, String(t.trace_id))));
    const tableNode = h("table", { class: "traces" },
      h("thead", {}, h("tr", {}, ["Started", "Root", "Duration", "Spans", "Outcome", "Trace id"].map((label, i) =>
        h("th", { scope: "col", class: i === 2 || i === 3 ? "num" : null }, label)))),
      h("tbody", {}, rows));
    fill(this.list, tableNode);
    if (focused) this.list.querySelector(`a[data-trace-id="${CSS.escape(focused)}"]`)?.focus();
  }

  async open(id) {
    const traceId = traceIdFrom(id);
    this.input.value = traceId;
    this.current = traceId;
    // Which trace the detail shows an answer for (tests and scripts wait on it).
    delete this.detail.dataset.traceId;
    if (!TRACE_ID.test(traceId)) {
      fill(this.detail, h("div", { class: "notice warn", role: "alert" },
        h("strong", {}, "That is not a trace id. "),
        `A trace id is 32 hexadecimal digits (got “${traceId.slice(0, 80)}”); a whole traceparent header works too.`));
      return;
    }
    fill(this.detail, h("p", { class: "muted" }, `Loading trace ${traceId}…`));
    let trace;
    try {
      trace = await getJSON(`/api/traces/${traceId}`);
    } catch (err) {
      if (this.current !== traceId) return;
      this.detail.dataset.traceId = traceId;
      if (err.status === 404) {
        fill(this.detail, h("div", { class: "notice warn", role: "alert", id: "trace-missing" },
          h("strong", {}, "No such trace. "),
          `The console has no record of trace ${traceId}: it was not sampled, its records have not arrived yet, or it is older than what the console keeps. `,
          h("button", { type: "button", class: "link", onclick: () => this.open(traceId) }, "Try again")));
      } else if (err.status === 400) {
        fill(this.detail, h("div", { class: "notice warn", role: "alert" }, h("strong", {}, "That is not a trace id. "), err.message));
      } else {
        fill(this.detail, h("div", { class: "notice bad", role: "alert" }, `Trace ${traceId} could not be loaded: ${err.message}`));
        this.ctx.report(`trace ${traceId}: ${err.message}`);
      }
      return;
    }
    if (this.current !== traceId) return;
    this.renderTrace(trace, traceId);
    this.detail.dataset.traceId = traceId;
  }

  renderTrace(trace, traceId) {
    const rows = waterfallRows(trace);
    const spans = rows.filter((r) => r.kind === "span");
    if (!rows.length) {
      fill(this.detail, h("div", { class: "notice warn", id: "trace-missing" }, h("strong", {}, "No such trace. "), `Trace ${traceId} has no spans.`));
      return;
    }
    const start = Math.min(...rows.map((r) => r.at).filter(Number.isFinite));
    const end = Math.max(...rows.map((r) => r.at + r.ms).filter(Number.isFinite));
    const total = Math.max(end - start, 0.001);
    const errors = spans.filter((r) => failed(r.span)).length;
    const ticks = [0, 0.25, 0.5, 0.75, 1].map((f) => h("span", { style: `left:${f * 100}%` }, nanos(f * total * 1e6)));
    const selected = h("div", { class: "span-detail", id: "span-detail" });
    const lines = rows.map((r) => {
      const left = ((r.at - start) / total) * 100;
      if (r.kind === "event") {
        const ev = r.event;
        return h("li", { class: "row event", dataset: { event: ev.type || "" } },
          h("div", { class: "label", style: `padding-left:${0.5 + r.depth * 1.1}rem` },
            h("span", { class: "side event" }, "event"), " ", h("strong", {}, shortService(ev.type)),
            h("span", { class: "muted" }, ` on ${ev.subject || "?"} #${ev.stream_sequence ?? "?"}`)),
          h("div", { class: "lane" }, Number.isFinite(r.at)
            ? h("span", { class: "marker", style: `left:${Math.min(100, Math.max(0, left))}%`, title: `${ev.type} published ${clock(r.at)}` })
            : null));
      }
      const sp = r.span;
      const width = Math.max((r.ms / total) * 100, 0.4);
      const bad = failed(sp);
      return h("li", { class: `row ${bad ? "failed" : ""}`, dataset: { spanId: sp.span_id, side: side(sp), deployment: sp.deployment || "" } },
        h("button", {
          type: "button", class: "label", style: `padding-left:${0.5 + r.depth * 1.1}rem`,
          "aria-controls": "span-detail",
          onclick: () => this.showSpan(selected, sp),
        }, h("span", { class: `side ${side(sp)}` }, side(sp)), " ", spanLabel(sp)),
        h("div", { class: "lane" },
          h("span", { class: `bar ${side(sp)} ${bad ? "failed" : ""}`, style: `left:${left}%;width:${width}%`, title: `${nanos(sp.duration_nanos)} · ${outcome(sp)}` }),
          figures(left, width, `${nanos(sp.duration_nanos)} · ${outcome(sp)}`)));
    });
    fill(this.detail,
      h("header", { class: "trace-head" },
        h("h3", {}, "Trace ", h("span", { class: "mono", id: "trace-id" }, traceId)),
        h("span", { class: "meta" }, `${clock(start)} · ${nanos(total * 1e6)} · ${spans.length} spans`,
          rows.length > spans.length ? ` · ${rows.length - spans.length} event${rows.length - spans.length === 1 ? "" : "s"}` : ""),
        errors ? h("span", { class: "badge bad" }, `${errors} failed`) : h("span", { class: "badge ok" }, "all ok")),
      h("div", { class: "waterfall", role: "group", "aria-label": "Spans of the trace in time order" },
        h("div", { class: "axis", "aria-hidden": "true" }, h("div", { class: "label" }), h("div", { class: "lane" }, ticks)),
        h("ol", { class: "rows" }, lines)),
      selected);
    this.showSpan(selected, spans[0].span);
  }

  showSpan(container, sp) {
    for (const li of this.detail.querySelectorAll("li.row.current")) li.classList.remove("current");
    this.detail.querySelector(`li.row[data-span-id="${CSS.escape(sp.span_id)}"]`)?.classList.add("current");
    const fields = [
      ["Side", side(sp)], ["Deployment", sp.deployment], ["Service", sp.service], ["Method", sp.method],
      ["Status", outcome(sp)], ["Started", clock(Number(sp.start_unix_nanos) / 1e6)], ["Duration", nanos(sp.duration_nanos)],
      ["Caller", sp.caller], ["Callee instance", sp.callee_instance], ["Attempt", sp.attempt ? String(Number(sp.attempt) + 1) : "1"],
      ["Hedge", sp.hedge ? "yes" : "no"], ["HTTP", sp.http_method ? `${sp.http_method} ${sp.http_route || ""} → ${sp.http_status || "?"}` : ""],
      ["Span id", sp.span_id], ["Parent span", sp.parent_span_id || "(root)"],
    ].filter(([, v]) => v !== undefined && v !== null && v !== "");
    const title = side(sp) === "gateway" ? `gateway: ${sp.http_method || ""} ${sp.http_route || ""}` : `${sp.deployment || "?"}, ${side(sp)} side of ${shortService(sp.service)}/${sp.method}`;
    fill(container, h("h4", {}, title),
      h("dl", {}, fields.map(([k, v]) => [h("dt", {}, k), h("dd", { class: /id|instance|Caller/.test(k) ? "mono" : null }, String(v))])));
  }
}

// The console page: one Server-Sent Events stream (/api/events) feeds the state; the view in
// sight is drawn from it. Every drawing is guarded: a failure shows in the status bar and the
// rest of the page carries on.

import { fill, h } from "./dom.js";
import { clock, percent, rate } from "./format.js";
import { DecisionsView } from "./decisions.js";
import { RoutesView } from "./routes.js";
import { ServicesView } from "./services.js";
import { MeshState } from "./state.js";
import { StreamsView } from "./streams.js";
import { TopologyView } from "./topology.js";
import { TracesView } from "./traces.js";
import { TrafficView } from "./traffic.js";

const VIEWS = ["services", "traffic", "topology", "traces", "events", "routes", "decisions"];
const STATS_STALE_MS = 5000;

const state = new MeshState();
const statusText = document.getElementById("status-text");
const statusBar = document.getElementById("status-bar");
const banners = document.getElementById("banners");
const summary = document.getElementById("summary");

// -- the status bar --------------------------------------------------------------------------

let lastError = null;

function report(message) {
  lastError = { message, at: Date.now() };
  statusBar.dataset.tone = "error";
  fill(statusText, h("strong", {}, "Error "), `${clock(lastError.at)}: ${message}`);
  document.getElementById("status-dismiss").hidden = false;
}

function notify(message) {
  lastError = null;
  statusBar.dataset.tone = "info";
  fill(statusText, `${clock(Date.now())}: ${message}`);
  document.getElementById("status-dismiss").hidden = false;
}

function idleStatus() {
  if (lastError) return;
  statusBar.dataset.tone = "";
  const parts = [];
  if (state.stats) parts.push(`stats ${clock(state.statsAt)} over ${state.stats.window_s} s`);
  if (state.stats?.dropped) parts.push(`${Number(state.stats.dropped).toLocaleString()} records dropped by their senders`);
  if (state.instancesSeen) parts.push(`registry ${clock(state.instancesAt)}`);
  fill(statusText, parts.length ? parts.join(" · ") : "Connecting…");
  document.getElementById("status-dismiss").hidden = true;
}

document.getElementById("status-dismiss").addEventListener("click", () => {
  lastError = null;
  idleStatus();
});

function guard(name, work) {
  try {
    return work();
  } catch (err) {
    console.error(name, err);
    report(`${name}: ${err && err.message ? err.message : err}`);
    return undefined;
  }
}

// -- views -----------------------------------------------------------------------------------

function navigate(route) {
  if (location.hash === `#${route}`) showRoute();
  else location.hash = route;
}

const ctx = { report, notify, guard, navigate };
const panel = (name) => document.getElementById(`view-${name}`);
const views = {
  services: new ServicesView(panel("services")),
  traffic: new TrafficView(panel("traffic")),
  topology: new TopologyView(panel("topology")),
  traces: new TracesView(panel("traces"), ctx),
  events: new StreamsView(panel("events"), ctx),
  routes: new RoutesView(panel("routes"), ctx),
  decisions: new DecisionsView(panel("decisions")),
};
views.services.onchange = () => renderSoon();
views.decisions.onchange = () => renderSoon();
let active = null;

function showRoute() {
  const [name, ...rest] = location.hash.replace(/^#/, "").split("/");
  const view = VIEWS.includes(name) ? name : "services";
  if (view !== active) {
    if (active) guard(`leaving ${active}`, () => views[active].hidden?.());
    for (const v of VIEWS) {
      panel(v).hidden = v !== view;
      const link = document.querySelector(`nav a[href="#${v}"]`);
      if (v === view) link.setAttribute("aria-current", "page");
      else link.removeAttribute("aria-current");
    }
    active = view;
    document.title = `${viewLabel(view)} · HMS Mesh console`;
    guard(`opening ${view}`, () => views[view].shown?.());
  }
  if (view === "traces" && rest.length && rest.join("/")) {
    views.traces.open(decodeURIComponent(rest.join("/"))).catch((err) => report(`trace: ${err.message}`));
  }
  render();
}

function viewLabel(view) {
  return document.querySelector(`nav a[href="#${view}"]`)?.dataset.label || view;
}

window.addEventListener("hashchange", showRoute);

// -- drawing ---------------------------------------------------------------------------------

let pending = false;

function renderSoon() {
  if (pending) return;
  pending = true;
  setTimeout(() => {
    pending = false;
    render();
  }, 0);
}

function render() {
  guard("banners", renderBanners);
  guard("summary", renderSummary);
  const view = views[active];
  if (view && view.render) guard(`the ${active} view`, () => view.render(state));
  idleStatus();
}

function banner(tone, id, title, text) {
  return h("div", { class: `banner ${tone}`, id, role: tone === "bad" ? "alert" : "status" },
    h("strong", {}, title), " ", text);
}

function renderBanners() {
  const list = [];
  if (state.stream === "lost") {
    list.push(banner("bad", "banner-console", "The console server is not answering.",
      `Reconnecting… What you see is as of ${clock(state.streamSince)} and no longer live.`));
  }
  if (state.nats && !state.nats.connected) {
    list.push(banner("bad", "banner-nats", "NATS is down or unreachable.",
      `Traffic, topology, traces and decisions stop until it is back; services and instances still come from etcd.${state.nats.error ? ` (${state.nats.error})` : ""}`));
  }
  if (state.registry && state.registry.connected === false) {
    list.push(banner("bad", "banner-etcd", "etcd (the registry) is down or unreachable.",
      `Services and instances are shown as last known and no longer follow the registry.${state.registry.error ? ` (${state.registry.error})` : ""}`));
  }
  if (state.stream === "open" && state.stats && Date.now() - state.statsAt > STATS_STALE_MS) {
    list.push(banner("warn", "banner-stale", "Figures are stale.", `The last stats came at ${clock(state.statsAt)}.`));
  }
  fill(banners, list);
  document.body.dataset.stream = state.stream;
  document.body.dataset.nats = state.nats ? String(state.nats.connected) : "unknown";
}

function renderSummary() {
  const services = new Set(state.instances.map((i) => i.service)).size;
  const totalRps = state.stats ? state.stats.methods.reduce((sum, m) => sum + (Number(m.rps) || 0), 0) : null;
  const calls = state.stats ? state.stats.methods.reduce((sum, m) => sum + (Number(m.count) || 0), 0) : 0;
  const failed = state.stats ? state.stats.methods.reduce((sum, m) => sum + (Number(m.count) || 0) * (Number(m.error_rate) || 0), 0) : 0;
  const live = state.stream === "open";
  fill(summary,
    h("li", {}, h("span", { class: "figure" }, state.instancesSeen ? String(services) : "–"), " services"),
    h("li", {}, h("span", { class: "figure" }, state.instancesSeen ? String(state.instances.length) : "–"), " instances"),
    h("li", {}, h("span", { class: "figure" }, totalRps === null ? "–" : rate(totalRps)), " req/s"),
    h("li", {}, h("span", { class: "figure" }, calls ? percent(failed / calls) : "–"), " errors"),
    h("li", { class: `pill ${live ? "ok" : state.stream === "lost" ? "bad" : "warn"}`, id: "live-pill" },
      live ? "live" : state.stream === "lost" ? "offline" : "connecting"),
    // What the server said of NATS and etcd holds only while its stream is live.
    live && state.nats ? h("li", { class: `pill ${state.nats.connected ? "ok" : "bad"}` }, state.nats.connected ? "NATS" : "NATS down") : null,
    live && state.registry && state.registry.connected !== null
      ? h("li", { class: `pill ${state.registry.connected ? "ok" : "bad"}` }, state.registry.connected ? "etcd" : "etcd down")
      : null);
}

// -- the event stream ------------------------------------------------------------------------

let source = null;
let retryMs = 1000;

function on(name, apply) {
  source.addEventListener(name, (event) => {
    guard(`the ${name} event`, () => apply(JSON.parse(event.data)));
    renderSoon();
  });
}

function connect() {
  source = new EventSource("/api/events");
  source.addEventListener("open", () => {
    state.stream = "open";
    state.streamSince = Date.now();
    retryMs = 1000;
    renderSoon();
  });
  source.addEventListener("error", () => {
    if (state.stream !== "lost") state.streamSince = Date.now();
    state.stream = "lost";
    renderSoon();
    // The browser retries by itself unless the server refused the stream outright.
    if (source.readyState === EventSource.CLOSED) {
      source.close();
      setTimeout(connect, retryMs);
      retryMs = Math.min(retryMs * 2, 15000);
    }
  });
  on("instances", (data) => state.setInstances(data));
  on("stats", (data) => state.setStats(data));
  on("decisions", (data) => (Array.isArray(data) ? data : [data]).forEach((d) => state.addDecision(d)));
  on("nats", (data) => { state.nats = { connected: Boolean(data.connected), error: data.error || "" }; });
  // connected: null until the console first asked etcd (neither up nor down yet).
  on("registry", (data) => { state.registry = { connected: data.connected === null ? null : Boolean(data.connected), error: data.error || "" }; });
}

window.addEventListener("error", (event) => report(event.message || "a script error"));
window.addEventListener("unhandledrejection", (event) => report(event.reason?.message || String(event.reason)));

setInterval(() => {
  guard("lease countdown", () => { if (active === "services") views.services.tick(state); });
  if (state.stats && Date.now() - state.statsAt > STATS_STALE_MS) renderSoon();
}, 1000);

showRoute();
connect();

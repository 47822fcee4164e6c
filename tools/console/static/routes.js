// The gateway's routes (method, template, backend, scopes) and an explorer that sends one
// with a development token holding the scopes picked, and links the answer to its trace.

import { getJSON, postJSON } from "./api.js";
import { fill, h, table } from "./dom.js";
import { shortService } from "./format.js";

const WITH_BODY = new Set(["POST", "PUT", "PATCH"]);

const routeKey = (r) => `${r.http_method} ${r.template}`;

function methodBadge(method) {
  return h("span", { class: `verb verb-${String(method).toLowerCase()}` }, method);
}

function pretty(body) {
  if (body === null || body === undefined || body === "") return "(empty body)";
  if (typeof body !== "string") return JSON.stringify(body, null, 2);
  try {
    return JSON.stringify(JSON.parse(body), null, 2);
  } catch {
    return body;
  }
}

export class RoutesView {
  constructor(panel, ctx) {
    this.panel = panel;
    this.ctx = ctx;
    this.routes = [];
    this.filter = "";
    this.loaded = false;
    this.list = h("div", { id: "routes-list" });
    this.explorer = h("section", { id: "explorer", class: "explorer", "aria-labelledby": "explorer-title" });
    const filter = h("input", {
      type: "search", id: "routes-filter", placeholder: "method, path, service…",
      oninput: (e) => { this.filter = e.target.value.trim().toLowerCase(); this.renderList(); },
    });
    fill(panel,
      h("div", { class: "toolbar" }, h("h2", {}, "Gateway routes"),
        h("label", { class: "filter" }, h("span", {}, "Filter"), filter),
        h("button", { type: "button", class: "secondary", onclick: () => this.refresh() }, "Refresh")),
      h("div", { class: "split" }, this.list, this.explorer));
    this.buildExplorer();
  }

  shown() {
    if (!this.loaded) this.refresh();
  }

  async refresh() {
    try {
      const routes = await getJSON("/api/routes");
      this.routes = (Array.isArray(routes) ? routes : []).slice().sort((a, b) =>
        String(a.template).localeCompare(String(b.template)) || String(a.http_method).localeCompare(String(b.http_method)));
      this.loaded = true;
      this.renderList();
      this.fillRouteChoices();
    } catch (err) {
      fill(this.list, h("p", { class: "notice bad" }, `The gateway's routes are not available: ${err.message}`));
      this.ctx.report(`routes: ${err.message}`);
    }
  }

  renderList() {
    if (!this.loaded) return;
    const shown = this.routes.filter((r) => !this.filter ||
      [r.http_method, r.template, r.service, r.method, ...(r.scopes || [])].join(" ").toLowerCase().includes(this.filter));
    if (!shown.length) {
      fill(this.list, h("p", { class: "empty" }, this.routes.length ? `No route matches “${this.filter}”.` : "The gateway serves no route: no service with REST routes is registered."));
      return;
    }
    const rows = shown.map((r) => h("tr", { dataset: { route: routeKey(r) } },
      h("td", {}, methodBadge(r.http_method)),
      h("td", {}, h("button", {
        type: "button", class: "link mono template", title: "Try it in the explorer",
        "aria-label": `Try ${routeKey(r)} in the explorer`, onclick: () => this.pick(r, true),
      }, r.template)),
      h("td", { title: `${r.service}/${r.method}` }, shortService(r.service), h("br"), h("span", { class: "muted small" }, r.method)),
      h("td", {}, r.public ? h("span", { class: "badge quiet" }, "public")
        : (r.scopes || []).map((sc) => h("span", { class: "chip" }, sc)))));
    fill(this.list, table(`${shown.length} of ${this.routes.length} routes`,
      [{ label: "Method" }, { label: "Template (try it)" }, { label: "Backend" }, { label: "Scopes" }], rows, { class: "routes" }));
  }

  buildExplorer() {
    this.routeSelect = h("select", { id: "explore-route", onchange: () => {
      const r = this.routes.find((x) => routeKey(x) === this.routeSelect.value);
      if (r) this.pick(r, false);
    } });
    this.method = h("select", { id: "explore-method" }, ["GET", "POST", "PUT", "PATCH", "DELETE"].map((m) => h("option", { value: m }, m)));
    this.path = h("input", { id: "explore-path", type: "text", class: "mono", spellcheck: "false", value: "/" });
    this.body = h("textarea", { id: "explore-body", class: "mono", rows: 9, spellcheck: "false" }, "{}");
    this.scopes = h("fieldset", { class: "scopes", id: "explore-scopes" }, h("legend", {}, "Token scopes"));
    this.extraScopes = h("input", { id: "explore-extra-scopes", type: "text", placeholder: "more scopes, space separated", class: "mono" });
    this.answer = h("div", { id: "explore-answer", class: "answer", "aria-live": "polite" });
    this.sendButton = h("button", { type: "submit" }, "Send");
    const form = h("form", { onsubmit: (e) => { e.preventDefault(); this.send(); } },
      h("label", { for: "explore-route" }, "Route"), this.routeSelect,
      h("div", { class: "row2" },
        h("div", {}, h("label", { for: "explore-method" }, "Method"), this.method),
        h("div", { class: "grow" }, h("label", { for: "explore-path" }, "Path (fill in the {variables})"), this.path)),
      h("label", { for: "explore-body" }, "JSON body"), this.body,
      this.scopes,
      h("label", { for: "explore-extra-scopes", class: "visually-hidden" }, "More scopes"), this.extraScopes,
      h("div", { class: "actions" }, this.sendButton,
        h("span", { class: "meta" }, "Sent by the console with a development token for subject “console”.")));
    fill(this.explorer, h("h3", { id: "explorer-title" }, "API explorer"), form, this.answer);
  }

  fillRouteChoices() {
    const current = this.routeSelect.value;
    fill(this.routeSelect, h("option", { value: "" }, "— pick a route —"),
      this.routes.map((r) => h("option", { value: routeKey(r) }, routeKey(r))));
    this.routeSelect.value = this.routes.some((r) => routeKey(r) === current) ? current : "";
    this.renderScopes(this.selectedScopes());
  }

  allScopes() {
    return [...new Set(this.routes.flatMap((r) => r.scopes || []))].sort();
  }

  selectedScopes() {
    return [...this.scopes.querySelectorAll("input:checked")].map((i) => i.value);
  }

  renderScopes(checked) {
    const wanted = new Set(checked);
    const boxes = this.allScopes().map((sc) => h("label", { class: "check" },
      h("input", { type: "checkbox", value: sc, checked: wanted.has(sc), name: "scope" }), " ", sc));
    fill(this.scopes, h("legend", {}, "Token scopes"), boxes.length ? boxes : h("span", { class: "muted" }, "No route asks for a scope."));
  }

  pick(route, focus) {
    this.routeSelect.value = routeKey(route);
    this.method.value = route.http_method;
    this.path.value = route.template;
    this.body.value = WITH_BODY.has(route.http_method) ? "{\n  \n}" : "";
    this.body.disabled = !WITH_BODY.has(route.http_method);
    this.renderScopes(route.scopes || []);
    fill(this.answer);
    if (focus) this.path.focus();
  }

  async send() {
    const method = this.method.value;
    const path = this.path.value.trim();
    if (!path.startsWith("/")) {
      fill(this.answer, h("p", { class: "notice warn", role: "alert" }, "The path starts with “/”."));
      return;
    }
    const unfilled = path.match(/\{[^}]*\}/);
    if (unfilled) {
      fill(this.answer, h("p", { class: "notice warn", role: "alert" }, `Fill in ${unfilled[0]} in the path first.`));
      this.path.focus();
      return;
    }
    let body = null;
    if (WITH_BODY.has(method) && this.body.value.trim()) {
      try {
        JSON.parse(this.body.value);
      } catch (err) {
        fill(this.answer, h("p", { class: "notice warn", role: "alert" }, `The body is not JSON: ${err.message}`));
        this.body.focus();
        return;
      }
      body = this.body.value;
    }
    const scopes = [...this.selectedScopes(), ...this.extraScopes.value.split(/\s+/).filter(Boolean)];
    this.sendButton.disabled = true;
    fill(this.answer, h("p", { class: "muted" }, `Sending ${method} ${path}…`));
    const started = performance.now();
    try {
      const answer = await postJSON("/api/explore", { method, path, body, scopes });
      this.renderAnswer(answer, performance.now() - started);
    } catch (err) {
      fill(this.answer, h("p", { class: "notice bad", role: "alert" }, `Not sent: ${err.message}`));
    } finally {
      this.sendButton.disabled = false;
    }
  }

  renderAnswer(answer, ms) {
    const status = Number(answer.status);
    const tone = status < 300 ? "ok" : status < 500 ? "warn" : "bad";
    const headers = Object.entries(answer.headers || {});
    fill(this.answer,
      h("div", { class: "answer-head" },
        h("span", { class: `badge ${tone}`, id: "explore-status" }, String(status)),
        h("span", { class: "meta" }, `${Math.round(ms)} ms round trip`),
        answer.trace_id
          ? h("a", { href: `#traces/${answer.trace_id}`, id: "explore-trace", class: "button-link", dataset: { traceId: answer.trace_id } }, "Open its trace ", h("span", { class: "mono" }, answer.trace_id.slice(0, 12) + "…"))
          : h("span", { class: "muted" }, "no trace id in the answer")),
      h("pre", { class: "body", tabindex: "0", "aria-label": "Response body" }, pretty(answer.body)),
      headers.length ? h("details", {}, h("summary", {}, `${headers.length} response headers`),
        h("dl", { class: "headers" }, headers.map(([k, v]) => [h("dt", {}, k), h("dd", { class: "mono" }, String(v))]))) : null);
    this.answer.scrollIntoView({ block: "nearest" });
  }
}

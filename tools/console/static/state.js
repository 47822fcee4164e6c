// What the page knows, fed by the server's events. Views read it; only app.js writes it.

const DEPARTED_KEEP = 20;
const HISTORY = 60; // stats samples kept per method (one a second: the last minute)

export const instanceKey = (i) => `${i.service}\u0000${i.instance_id}`;

export class MeshState {
  constructor() {
    this.instances = [];
    this.instancesAt = 0; // when the list came (ms), for counting leases down
    this.instancesSeen = false;
    this.departed = []; // [{instance, at}] newest first
    this.vanished = new Map(); // service -> {deployment, at}: had instances, has none now
    this.stats = null;
    this.statsAt = 0;
    this.history = new Map(); // "service/method" -> [rps, ...]
    this.decisions = [];
    this.decisionsDropped = 0;
    this.nats = null; // {connected, error} once told
    this.registry = null; // {connected, error} once told
    this.stream = "connecting"; // the SSE connection: connecting | open | lost
    this.streamSince = Date.now();
  }

  setInstances(list, now = Date.now()) {
    if (!Array.isArray(list)) throw new Error("the instances event is not a list");
    const next = new Map(list.map((i) => [instanceKey(i), i]));
    if (this.instancesSeen) {
      for (const old of this.instances) {
        if (!next.has(instanceKey(old))) this.departed.unshift({ instance: old, at: now });
      }
      this.departed.length = Math.min(this.departed.length, DEPARTED_KEEP);
    }
    const before = new Set(this.instances.map((i) => i.service));
    const after = new Set(list.map((i) => i.service));
    for (const service of before) {
      if (!after.has(service)) {
        const last = this.instances.find((i) => i.service === service);
        this.vanished.set(service, { deployment: last ? last.deployment : "", at: now });
      }
    }
    for (const service of after) this.vanished.delete(service);
    // An instance that came back is no longer "recently left".
    this.departed = this.departed.filter((d) => !next.has(instanceKey(d.instance)));
    this.instances = list;
    this.instancesAt = now;
    this.instancesSeen = true;
  }

  /** Seconds left on an instance's lease now, counted down since the list came. */
  leaseLeft(instance, now = Date.now()) {
    const ttl = instance.lease_ttl_s;
    if (ttl === null || ttl === undefined || Number.isNaN(Number(ttl))) return null;
    return Math.max(0, Number(ttl) - (now - this.instancesAt) / 1000);
  }

  setStats(stats, now = Date.now()) {
    if (!stats || typeof stats !== "object") throw new Error("the stats event is not an object");
    this.stats = {
      window_s: stats.window_s ?? 60,
      methods: Array.isArray(stats.methods) ? stats.methods : [],
      edges: Array.isArray(stats.edges) ? stats.edges : [],
      dropped: stats.dropped ?? 0,
    };
    this.statsAt = now;
    const seen = new Set();
    for (const m of this.stats.methods) {
      const key = `${m.service}/${m.method}`;
      seen.add(key);
      const series = this.history.get(key) || [];
      series.push(Number(m.rps) || 0);
      if (series.length > HISTORY) series.shift();
      this.history.set(key, series);
    }
    for (const [key, series] of this.history) {
      if (seen.has(key)) continue;
      series.push(0);
      if (series.length > HISTORY) series.shift();
      if (series.every((v) => v === 0)) this.history.delete(key);
    }
  }

  addDecision(decision, limit = 500) {
    if (!decision || typeof decision !== "object") throw new Error("a decision that is not an object");
    this.decisions.unshift({ ...decision, receivedAt: Date.now() });
    if (this.decisions.length > limit) {
      this.decisionsDropped += this.decisions.length - limit;
      this.decisions.length = limit;
    }
  }

  /** Deployments known from the registry, with their instances. */
  deployments() {
    const by = new Map();
    for (const i of this.instances) {
      const name = i.deployment || "(unknown)";
      if (!by.has(name)) by.set(name, []);
      by.get(name).push(i);
    }
    return by;
  }
}

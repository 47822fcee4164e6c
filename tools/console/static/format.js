// How numbers, durations and times read on the page.

export function rate(value) {
  if (value === null || value === undefined || Number.isNaN(value)) return "–";
  if (value === 0) return "0";
  if (value < 0.1) return value.toFixed(2);
  if (value < 10) return value.toFixed(1);
  return Math.round(value).toLocaleString();
}

export function percent(fraction) {
  if (fraction === null || fraction === undefined || Number.isNaN(fraction)) return "–";
  if (fraction === 0) return "0 %";
  const p = fraction * 100;
  return `${p < 1 ? p.toFixed(2) : p < 10 ? p.toFixed(1) : Math.round(p)} %`;
}

export function millis(ms) {
  if (ms === null || ms === undefined || Number.isNaN(ms)) return "–";
  if (ms < 1) return `${ms.toFixed(2)} ms`;
  if (ms < 100) return `${ms.toFixed(1)} ms`;
  if (ms < 10_000) return `${Math.round(ms)} ms`;
  return `${(ms / 1000).toFixed(1)} s`;
}

export function nanos(ns) {
  return millis(Number(ns) / 1e6);
}

/** A time as the API gives it (unix nanoseconds, seconds, or an ISO string) in ms since epoch. */
export function toEpochMs(value) {
  if (value === null || value === undefined || value === "") return null;
  if (typeof value === "number" || /^\d+(\.\d+)?$/.test(String(value))) {
    const n = Number(value);
    if (n > 1e17) return n / 1e6; // nanoseconds
    if (n > 1e14) return n / 1e3; // microseconds
    if (n > 1e11) return n; // milliseconds
    return n * 1000; // seconds
  }
  const parsed = Date.parse(value);
  return Number.isNaN(parsed) ? null : parsed;
}

export function clock(epochMs) {
  if (epochMs === null || epochMs === undefined) return "–";
  const d = new Date(epochMs);
  const pad = (n, w = 2) => String(n).padStart(w, "0");
  return `${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}.${pad(d.getMilliseconds(), 3)}`;
}

export function ago(epochMs, now = Date.now()) {
  const s = Math.max(0, Math.round((now - epochMs) / 1000));
  if (s < 60) return `${s} s ago`;
  if (s < 3600) return `${Math.floor(s / 60)} min ago`;
  return `${Math.floor(s / 3600)} h ago`;
}

/** "hms.housing.v1.HousingService" -> "HousingService" (the full name stays in a title). */
export function shortService(name) {
  const parts = String(name || "").split(".");
  return parts[parts.length - 1] || String(name || "");
}

export const TRACE_ID = /^[0-9a-f]{32}$/;

/** A trace id from what a person pastes: a bare id, or a whole traceparent header. */
export function traceIdFrom(text) {
  const t = String(text || "").trim().toLowerCase();
  const parent = /^[0-9a-f]{2}-([0-9a-f]{32})-[0-9a-f]{16}-[0-9a-f]{2}$/.exec(t);
  return parent ? parent[1] : t;
}

export const GRPC_CODES = [
  "OK", "CANCELLED", "UNKNOWN", "INVALID_ARGUMENT", "DEADLINE_EXCEEDED", "NOT_FOUND",
  "ALREADY_EXISTS", "PERMISSION_DENIED", "RESOURCE_EXHAUSTED", "FAILED_PRECONDITION", "ABORTED",
  "OUT_OF_RANGE", "UNIMPLEMENTED", "INTERNAL", "UNAVAILABLE", "DATA_LOSS", "UNAUTHENTICATED",
];

export function grpcCode(code) {
  if (typeof code === "string" && !/^\d+$/.test(code)) return code;
  return GRPC_CODES[Number(code)] ?? `code ${code}`;
}

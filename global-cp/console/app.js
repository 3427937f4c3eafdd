// Tern console: a few views over the global's API, refreshed every 5 s.
// No framework and no build step: this file is served as written.
"use strict";

const REFRESH_MS = 5000;
const POLICY_KINDS = [
  ["AccessPolicy", "accesspolicies"], ["MtlsPolicy", "mtlspolicies"],
  ["HttpRoute", "httproutes"], ["TcpRoute", "tcproutes"], ["Retry", "retries"],
  ["Timeout", "timeouts"], ["CircuitBreaker", "circuitbreakers"],
  ["LoadBalancer", "loadbalancers"], ["HealthCheck", "healthchecks"],
  ["RateLimit", "ratelimits"], ["FaultInjection", "faultinjections"],
  ["AccessLog", "accesslogs"], ["Trace", "traces"],
];
const COLORS = ["#2457c5", "#c62828", "#1a7f37", "#b26a00", "#7b3fb5", "#00838f", "#6d4c41", "#ad1457"];

let timer = null;

function esc(v) {
  return String(v ?? "").replace(/[&<>"']/g, (c) =>
    ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" })[c]);
}

async function api(path) {
  const r = await fetch(path, { credentials: "same-origin", headers: { accept: "application/json" } });
  if (r.status === 401) {
    location.href = "/ui/login";
    throw new Error("signed out");
  }
  if (!r.ok) throw new Error(`${path}: ${r.status} ${await r.text()}`);
  return r.json();
}

function num(v, digits = 1) {
  return typeof v === "number" ? v.toFixed(digits) : "–";
}
function ms(v) {
  return typeof v === "number" ? (v < 10 ? v.toFixed(2) : v.toFixed(0)) + " ms" : "–";
}
function pct(v) {
  return typeof v === "number" ? (v * 100).toFixed(2) + "%" : "–";
}
function bytes(v) {
  if (typeof v !== "number") return "–";
  const units = ["B/s", "KB/s", "MB/s", "GB/s"];
  let i = 0;
  while (v >= 1000 && i < units.length - 1) { v /= 1000; i++; }
  return `${v.toFixed(i === 0 ? 0 : 1)} ${units[i]}`;
}
// Opaque TCP figures as table cells: connections, those that reached no
// endpoint (red when any did), and bytes, each muted when zero.
const TCP_HEAD = ["TCP conn/s", "TCP failed/s", "TCP bytes"];
function tcpCells(r) {
  const cell = (cls, v, text, warn) =>
    `<td class="num ${cls} ${v > 0 ? (warn ? "bad" : "") : "muted"}">${text}</td>`;
  return cell("tcp-cps", r.tcpCps, num(r.tcpCps), false) +
    cell("tcp-failed", r.tcpFailedCps, num(r.tcpFailedCps), true) +
    cell("tcp-bps", r.tcpBps, bytes(r.tcpBps), false);
}

// A line chart of named series of [t, value] points, as inline SVG.
function chart(title, series, unit) {
  const names = Object.keys(series).sort();
  const pts = names.flatMap((n) => series[n]);
  if (pts.length === 0) {
    return `<div class="card chart"><h3>${esc(title)}</h3><p class="muted">No data yet.</p></div>`;
  }
  const w = 600, h = 160, pad = 34;
  const t0 = Math.min(...pts.map((p) => p[0])), t1 = Math.max(...pts.map((p) => p[0]));
  const top = Math.max(...pts.map((p) => p[1]));
  const vmax = Math.max(top, 1e-9);
  const x = (t) => pad + (t1 === t0 ? 0 : ((t - t0) / (t1 - t0)) * (w - pad - 8));
  const y = (v) => h - 18 - (v / vmax) * (h - 30);
  const lines = names.map((n, i) => {
    const d = series[n].map((p) => `${x(p[0]).toFixed(1)},${y(p[1]).toFixed(1)}`).join(" ");
    return `<polyline fill="none" stroke="${COLORS[i % COLORS.length]}" stroke-width="2" points="${d}"/>`;
  }).join("");
  const axis = `<line x1="${pad}" y1="${h - 18}" x2="${w - 8}" y2="${h - 18}" stroke="#ccd"/>` +
    `<text x="2" y="14" font-size="11" fill="#6b7385">${esc(num(vmax, 2))} ${esc(unit)}</text>` +
    `<text x="2" y="${h - 20}" font-size="11" fill="#6b7385">0</text>` +
    `<text x="${pad}" y="${h - 4}" font-size="11" fill="#6b7385">${esc(new Date(t0).toLocaleTimeString())}</text>` +
    `<text x="${w - 70}" y="${h - 4}" font-size="11" fill="#6b7385">${esc(new Date(t1).toLocaleTimeString())}</text>`;
  const legend = names.map((n, i) =>
    `<span><i class="c${i % COLORS.length}"></i>${esc(n)}</span>`).join("");
  return `<div class="card chart" data-chart="${esc(title)}" data-max="${top}"><h3>${esc(title)}</h3>` +
    `<svg viewBox="0 0 ${w} ${h}" preserveAspectRatio="none" role="img" aria-label="${esc(title)}">${axis}${lines}</svg>` +
    `<div class="legend">${legend}</div></div>`;
}

function table(head, rows) {
  return `<table><thead><tr>${head.map((h) => `<th>${esc(h)}</th>`).join("")}</tr></thead>` +
    `<tbody>${rows.join("") || `<tr><td colspan="${head.length}" class="muted">None.</td></tr>`}</tbody></table>`;
}

// ---- views ----

async function zones() {
  const v = await api("/api/v1/inspect/zones");
  const rows = v.items.map((z) => {
    const svcs = Object.entries(z.services || {}).map(([k, n]) => `${esc(k)} (${esc(n)})`).join(", ");
    return `<tr data-zone="${esc(z.name)}"><td>${esc(z.name)}</td>` +
      `<td class="${z.online ? "ok" : "bad"}">${z.online ? "online" : "offline"}</td>` +
      `<td data-region="${esc(z.region || "")}">${esc(z.region || "–")}</td><td>${esc(z.lastSeen || "–")}</td>` +
      `<td class="num">${esc(z.ackedVersion)} / ${esc(z.globalVersion)}</td>` +
      `<td class="num">${esc(z.connectedProxies)}</td><td>${svcs || "–"}</td>` +
      `<td class="${z.lastNack ? "bad" : "muted"}">${esc(z.lastNack || "none")}</td></tr>`;
  });
  return `<h2>Zones</h2>` + table(
    ["Zone", "State", "Region", "Last seen", "Acked / global version", "Proxies", "Services", "Last NACK"], rows);
}

// Requests per second by zone (all services) and p99 by service, over the
// last ten minutes, from the services' series.
async function serviceCharts(names) {
  const byZone = {}, p99 = {};
  const all = await Promise.all(names.slice(0, 20).map((n) =>
    api(`/api/v1/inspect/services/${encodeURIComponent(n)}/series?window=10m`).catch(() => null)));
  all.forEach((s, i) => {
    if (!s) return;
    for (const [zone, points] of Object.entries(s.zones)) {
      // Zones report every 5 s (every second while a drill runs), a few
      // hundred ms apart: bucket by 5 s, a service's rate in a bucket being
      // its requests there over the time its reports cover, and a zone's
      // the sum over services.
      const mine = new Map();
      for (const p of points) {
        const t = Math.round(p.t / 5000) * 5000;
        const m = mine.get(t) || [0, 0];
        mine.set(t, [m[0] + p.rps * p.intervalMs, m[1] + p.intervalMs]);
        if (typeof p.p99Ms === "number") {
          (p99[`${names[i]} in ${zone}`] ||= []).push([p.t, p.p99Ms]);
        }
      }
      const z = (byZone[zone] ||= new Map());
      for (const [t, [n, ms]] of mine) z.set(t, (z.get(t) || 0) + (ms > 0 ? n / ms : 0));
    }
  });
  const rate = {};
  for (const [zone, m] of Object.entries(byZone)) {
    rate[zone] = [...m.entries()].sort((a, b) => a[0] - b[0]);
  }
  return `<div class="grid">${chart("Requests per second by zone", rate, "req/s")}` +
    `${chart("p99 latency by service and zone", p99, "ms")}</div>`;
}

async function services() {
  const v = await api("/api/v1/inspect/services?window=1m");
  const rows = [];
  for (const s of v.items) {
    for (const z of s.zones) {
      rows.push(`<tr data-service="${esc(s.service)}" data-zone="${esc(z.zone)}">` +
        `<td><a href="#/service/${encodeURIComponent(s.service)}">${esc(s.service)}</a></td>` +
        `<td>${esc(z.zone)}</td>` +
        `<td class="num ${z.healthy < z.instances ? "warn" : ""}">${esc(z.healthy)}/${esc(z.instances)}</td>` +
        `<td class="num">${num(z.rps)}</td><td class="num ${z.errorRate > 0 ? "bad" : ""}">${pct(z.errorRate)}</td>` +
        `<td class="num">${ms(z.p50Ms)}</td><td class="num">${ms(z.p99Ms)}</td>${tcpCells(z)}</tr>`);
    }
  }
  const charts = await serviceCharts(v.items.map((s) => s.service));
  return `<h2>Services <span class="muted">(last minute)</span></h2>` + charts + "<h3>Per zone</h3>" +
    table(["Service", "Zone", "Healthy", "Req/s", "Errors", "p50", "p99", ...TCP_HEAD], rows);
}

async function service(name) {
  const [list, s] = await Promise.all([
    api("/api/v1/inspect/services?window=1m"),
    api(`/api/v1/inspect/services/${encodeURIComponent(name)}/series?window=10m`),
  ]);
  const rps = {}, p99 = {}, err = {}, conns = {};
  let tcp = false;
  for (const [zone, points] of Object.entries(s.zones)) {
    rps[zone] = points.map((p) => [p.t, p.rps]);
    p99[zone] = points.filter((p) => typeof p.p99Ms === "number").map((p) => [p.t, p.p99Ms]);
    err[zone] = points.map((p) => [p.t, p.errorRate * 100]);
    conns[zone] = points.map((p) => [p.t, p.tcpCps]);
    conns[`${zone} failed`] = points.map((p) => [p.t, p.tcpFailedCps]);
    tcp ||= points.some((p) => p.tcpCps > 0);
  }
  const me = list.items.find((x) => x.service === name);
  const rows = (me ? me.zones : []).map((z) =>
    `<tr data-zone="${esc(z.zone)}"><td>${esc(z.zone)}</td><td class="num">${esc(z.healthy)}/${esc(z.instances)}</td>` +
    `<td class="num">${num(z.rps)}</td><td class="num">${pct(z.errorRate)}</td><td class="num">${ms(z.p99Ms)}</td>` +
    `${tcpCells(z)}<td>${esc(Object.entries(z.decisions || {}).map(([k, n]) => `${k} ${num(n)}/s`).join(", ") || "–")}</td></tr>`);
  // An opaque TCP service has no requests: its connections are its chart.
  const http = !tcp || Object.values(rps).some((pts) => pts.some((p) => p[1] > 0));
  return `<h2>Service ${esc(name)}</h2><div class="grid">` +
    (http ? chart("Requests per second", rps, "req/s") + chart("p99 latency", p99, "ms") +
      chart("Errors (5xx share)", err, "%") : "") +
    (tcp ? chart("TCP connections per second (and failed)", conns, "conn/s") : "") + `</div><h3>Last minute</h3>` +
    table(["Zone", "Healthy", "Req/s", "Errors", "p99", ...TCP_HEAD, "Policy decisions"], rows);
}

async function traffic() {
  const v = await api("/api/v1/inspect/traffic?window=1m");
  const zones = [...new Set(v.matrix.flatMap((f) => [f.sourceZone, f.destinationZone]))].sort();
  const cell = (s, d) => v.matrix.find((f) => f.sourceZone === s && f.destinationZone === d);
  const head = `<tr><th>from \\ to</th>${zones.map((z) => `<th>${esc(z)}</th>`).join("")}</tr>`;
  const body = zones.map((s) => `<tr><th>${esc(s)}</th>${zones.map((d) => {
    const f = cell(s, d);
    return f ? `<td class="cell" data-from="${esc(s)}" data-to="${esc(d)}">${num(f.rps)} req/s` +
      `<br><span class="${f.errorRate > 0 ? "bad" : "muted"}">${pct(f.errorRate)} err</span>` +
      `<br><span class="muted">p99 ${ms(f.p99Ms)}</span>` +
      (f.tcpCps > 0 ? `<br>${num(f.tcpCps)} conn/s <span class="${f.tcpFailedCps > 0 ? "bad" : "muted"}">` +
        `(${num(f.tcpFailedCps)} failed)</span>` : "") + `</td>` : `<td class="cell muted">–</td>`;
  }).join("")}</tr>`).join("");
  const edges = v.edges.map((e) => `<tr data-edge="${esc(e.sourceService)}.${esc(e.sourceZone)}>${esc(e.destinationService)}.${esc(e.destinationZone)}">` +
    `<td>${esc(e.sourceService)}</td><td>${esc(e.sourceZone)}</td>` +
    `<td>${esc(e.destinationService)}</td><td>${esc(e.destinationZone)}</td><td class="num">${num(e.rps)}</td>` +
    `<td class="num">${pct(e.errorRate)}</td><td class="num">${ms(e.p99Ms)}</td>${tcpCells(e)}</tr>`);
  return `<h2>Zone to zone <span class="muted">(last minute, as callers see it)</span></h2>` +
    `<table class="matrix">${head}${body}</table><h3>Service edges</h3>` +
    table(["From service", "Zone", "To service", "Zone", "Req/s", "Errors", "p99", ...TCP_HEAD], edges);
}

function applies(spec) {
  const sel = (s) => {
    if (!s || Object.keys(s).length === 0) return "the whole mesh";
    return Object.entries(s).map(([k, v]) => `${k} ${typeof v === "object" ? JSON.stringify(v) : v}`).join(", ");
  };
  let out = sel(spec.targetRef);
  if (spec.to) out += ` → ${sel(spec.to)}`;
  return out;
}

async function policies() {
  const lists = await Promise.all(POLICY_KINDS.map(([kind, plural]) =>
    api(`/api/v1/${plural}`).then((v) => [kind, v.items]).catch(() => [kind, []])));
  const rows = [];
  for (const [kind, items] of lists) {
    for (const p of items) {
      const name = p.metadata?.name ?? "";
      rows.push(`<tr data-policy="${esc(kind)}/${esc(name)}"><td>${esc(kind)}</td><td>${esc(name)}</td>` +
        `<td>${esc(applies(p.spec || {}))}</td>` +
        `<td><details><summary>spec</summary><pre>${esc(toYaml(p))}</pre></details></td></tr>`);
    }
  }
  return `<h2>Policies</h2>` + table(["Kind", "Name", "Applies to", "Document"], rows);
}

// YAML for display (the API speaks JSON).
function toYaml(v, indent = "") {
  if (Array.isArray(v)) {
    if (v.length === 0) return "[]";
    return v.map((x) => `\n${indent}- ${toYaml(x, indent + "  ").trimStart()}`).join("");
  }
  if (v && typeof v === "object") {
    const keys = Object.keys(v);
    if (keys.length === 0) return "{}";
    return keys.map((k) => {
      const x = v[k];
      const inner = toYaml(x, indent + "  ");
      return (x && typeof x === "object" && Object.keys(x).length > 0)
        ? `\n${indent}${k}:${inner}` : `\n${indent}${k}: ${inner}`;
    }).join("");
  }
  return typeof v === "string" && /[:#\-{}\[\],&*?|<>=!%@`]|^\s|\s$/.test(v) ? JSON.stringify(v) : String(v);
}

async function dataplanes() {
  const v = await api("/api/v1/inspect/dataplanes");
  const rows = v.items.map((d) => {
    const state = !d.connected ? ["disconnected", "bad"] : d.kind === "gateway" ? ["connected", "ok"]
      : d.serving ? ["serving", "ok"] : [d.health, "warn"];
    return `<tr data-dataplane="${esc(d.name)}"><td><a href="#/dataplane/${encodeURIComponent(d.zone)}/${encodeURIComponent(d.name)}">${esc(d.name)}</a></td>` +
      `<td>${esc(d.zone)}</td><td>${esc(d.service)}</td><td>${esc(d.kind)}</td><td>${esc(d.version)}</td>` +
      `<td class="${state[1]}">${esc(state[0])}</td><td>${esc(d.certificateNotAfter || "–")}</td>` +
      `<td class="${d.lastNack ? "bad" : ""}">${d.lastNack ? "NACK: " + esc(d.lastNack) : "acked v" + esc(d.ackedVersion)}</td></tr>`;
  });
  const errs = Object.entries(v.errors || {}).map(([z, e]) => `<p class="bad">zone ${esc(z)}: ${esc(e)}</p>`).join("");
  return `<h2>Dataplanes</h2>${errs}` +
    table(["Name", "Zone", "Service", "Kind", "Version", "State", "Certificate expires", "Sync"], rows);
}

async function dataplane(zone, name) {
  const v = await api(`/api/v1/inspect/dataplanes/${encodeURIComponent(zone)}/${encodeURIComponent(name)}`);
  return `<h2>Dataplane ${esc(name)} <span class="muted">in ${esc(zone)}</span></h2>` +
    `<p>What its zone compiles for it: the policies that apply, its inbound rules, and the routes and endpoints of each service it calls.</p>` +
    `<pre data-explain>${esc(toYaml(v))}</pre>`;
}

function when(t) {
  return typeof t === "number" ? new Date(t).toLocaleString() : "–";
}

async function drills() {
  const v = await api("/api/v1/drill-runs");
  const running = v.running;
  const head = running
    ? `<div class="card"><p>Running: <b>${esc(running.drill)}</b> (run ${esc(running.run)}) ` +
      `<button type="button" class="danger" data-abort="${esc(running.drill)}">Abort now</button></p></div>`
    : `<p class="muted">No drill running. Start one with <code>ternctl drill run NAME</code>.</p>`;
  const rows = v.runs.map((r) =>
    `<tr data-run="${esc(r.run)}"><td><a href="#/drill/${encodeURIComponent(r.drill)}/${encodeURIComponent(r.run)}">${esc(r.drill)}</a></td>` +
    `<td>${esc(r.run)}</td><td>${esc(r.method)}</td><td>${esc(r.state)}</td>` +
    `<td class="${r.outcome === "passed" ? "ok" : r.outcome ? "bad" : ""}">${esc(r.outcome || "–")}</td>` +
    `<td>${esc(when(r.startedAt))}</td><td>${esc(r.reason || "")}</td></tr>`);
  return `<h2>Drills</h2>${head}` +
    table(["Drill", "Run", "Method", "State", "Outcome", "Started", "Reason"], rows);
}

async function drill(name, run) {
  const q = run ? `?run=${encodeURIComponent(run)}` : "";
  const r = await api(`/api/v1/drills/${encodeURIComponent(name)}/report${q}`);
  const start = r.startedAt;
  const t = (x) => (typeof x === "number" ? `+${((x - start) / 1000).toFixed(0)} s` : "–");
  const target = r.target.zone ? `zone ${r.target.zone}` : r.target.region ? `region ${r.target.region}`
    : `link ${(r.target.link || []).join(" ↔ ")}`;
  const abort = r.state === "running"
    ? ` <button type="button" class="danger" data-abort="${esc(r.drill)}">Abort now</button>` : "";
  let html = `<h2>Drill ${esc(r.drill)} <span class="muted">run ${esc(r.run)}</span>${abort}</h2>` +
    `<p>${esc(r.method)} of ${esc(target)}${r.target.services ? " (services " + esc(r.target.services.join(", ")) + ")" : ""}` +
    ` — ${esc(r.state)}, <b class="${r.outcome === "passed" ? "ok" : "bad"}">${esc(r.outcome || "in progress")}</b> ${esc(r.reason || "")}</p>` +
    `<h3>Timeline</h3>` +
    table(["Time", "Event", "Detail"], r.events.map((e) =>
      `<tr><td>${esc(t(e.at))}</td><td>${esc(e.event)}</td><td>${esc(e.detail || "")}</td></tr>`)) +
    `<h3>SLOs</h3>` +
    table(["Service", "Max errors", "Errors", "Max p99", "p99", "Verdict"], (r.slos || []).map((x) =>
      `<tr><td>${esc(x.service)}</td><td>${esc(x.maxErrorRate ?? "–")}%</td><td>${esc(x.errorRate)}%</td>` +
      `<td>${ms(x.maxP99Ms)}</td><td>${ms(x.p99Ms)}</td><td class="${x.met ? "ok" : "bad"}">${x.met ? "met" : "breached"}</td></tr>`));
  for (const f of r.services || []) {
    const pts = (r.points || []).filter((p) => p.service === f.service);
    const byZone = {};
    for (const p of pts) {
      for (const [z, v] of Object.entries(p.rps)) (byZone[z] ||= []).push([p.t, v]);
    }
    const secs = (x) => (x == null ? "–" : x.toFixed(1) + " s");
    const moved = (f.movedAfterSeconds || []).map(secs).join(", ");
    html += `<h3>${esc(f.service)}</h3>` +
      `<p>${esc(f.total.requests)} requests, ${esc(f.total.failed)} failed (${esc(f.during.requests)} and ${esc(f.during.failed)} during the drill); ` +
      `target share before ${esc((f.baselineShare * 100).toFixed(0))}%; moved after ${esc(moved || "–")}; ` +
      `returned after ${esc(secs(f.returnedAfterSeconds))}</p>` +
      `<div class="charts">` +
      chart(`${f.service}: requests per second by serving zone`, byZone, "req/s") +
      chart(`${f.service}: error rate`, { errors: pts.map((p) => [p.t, p.errorRate * 100]) }, "%") +
      chart(`${f.service}: p99 latency`, { p99: pts.filter((p) => p.p99Ms != null).map((p) => [p.t, p.p99Ms]) }, "ms") +
      `</div>` +
      table(["Phase", "Served by", "Requests", "Failed", "p99"], ["before", "during", "after"].flatMap((ph) =>
        Object.entries(f[ph].byZone || {}).map(([z, c]) =>
          `<tr><td>${ph}</td><td>${esc(z)}</td><td>${esc(c.requests)}</td><td>${esc(c.failed)}</td><td>${ms(c.p99Ms)}</td></tr>`)));
  }
  return html;
}

// Aborting a drill is the console's one write: it carries the session's
// CSRF token (embedded in the page) as well as its cookie.
document.addEventListener("click", async (e) => {
  const b = e.target.closest("button[data-abort]");
  if (!b) return;
  b.disabled = true;
  const csrf = document.querySelector('meta[name="csrf"]').content;
  const r = await fetch(`/api/v1/drills/${encodeURIComponent(b.dataset.abort)}/abort`, {
    method: "POST", credentials: "same-origin", headers: { "x-tern-csrf": csrf },
  });
  b.textContent = r.ok ? "aborted" : `abort failed: ${r.status}`;
  await render();
});

// ---- routing ----

async function render() {
  const hash = location.hash || "#/zones";
  const parts = hash.slice(2).split("/").map(decodeURIComponent);
  document.querySelectorAll("header nav a").forEach((a) =>
    a.classList.toggle("active", a.dataset.nav === parts[0] ||
      (a.dataset.nav === "services" && parts[0] === "service") ||
      (a.dataset.nav === "dataplanes" && parts[0] === "dataplane") ||
      (a.dataset.nav === "drills" && parts[0] === "drill")));
  const view = document.getElementById("view");
  try {
    let html;
    switch (parts[0]) {
      case "services": html = await services(); break;
      case "service": html = await service(parts[1]); break;
      case "traffic": html = await traffic(); break;
      case "policies": html = await policies(); break;
      case "dataplanes": html = await dataplanes(); break;
      case "dataplane": html = await dataplane(parts[1], parts[2]); break;
      case "drills": html = await drills(); break;
      case "drill": html = await drill(parts[1], parts[2]); break;
      default: html = await zones();
    }
    // Keep what a person opened (details) across refreshes.
    const open = [...view.querySelectorAll("details[open]")].map((d) => d.closest("tr")?.dataset.policy);
    view.innerHTML = html;
    open.forEach((p) => view.querySelector(`tr[data-policy="${CSS.escape(p || "")}"] details`)?.setAttribute("open", ""));
    view.dataset.ready = parts[0] || "zones";
    document.getElementById("updated").textContent = "updated " + new Date().toLocaleTimeString();
  } catch (e) {
    view.innerHTML = `<p class="bad">${esc(e.message)}</p>`;
  }
}

function schedule() {
  clearTimeout(timer);
  timer = setTimeout(async () => {
    await render();
    schedule();
  }, REFRESH_MS);
}

window.addEventListener("hashchange", async () => {
  document.getElementById("view").dataset.ready = "";
  await render();
  schedule();
});
render().then(schedule);

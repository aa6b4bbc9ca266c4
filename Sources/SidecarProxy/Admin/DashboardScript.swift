extension DashboardPage {
    /// The page's script. It polls `stats/live` (relative, so the page also works behind a
    /// reverse proxy that mounts it under a prefix) every 2 s, or every `?every=MS` (at least
    /// 250). Counters are turned into rates and percentiles from the difference between polls:
    /// the daemon keeps no time series. A failed poll only marks the page "reconnecting" and the
    /// next one is tried as usual, so a reload, or even a restart, of the daemon needs nothing
    /// from the person looking. All text goes in with `textContent`: nothing from the daemon is
    /// ever parsed as HTML.
    static let script = #"""
"use strict";
const every = Math.max(250, Number(new URLSearchParams(location.search).get("every")) || 2000);
const HISTORY_MS = 5 * 60 * 1000;     // what the charts show
const PERCENTILE_MS = 60 * 1000;      // the tiles' percentiles: the last minute
const RATE_MS = 10 * 1000;            // the tile's requests per second: the last 10 s
let samples = [];                     // one per poll: {t, started, finished, bad, buckets}
let polls = 0;
let cacheDays = [];                   // per day, over the models: for the cache chart
let lastBounds = [];                  // the latency buckets' bounds, for a redraw on resize

const $ = (id) => document.getElementById(id);
function setFigure(id, text, value) {
  const el = $(id);
  el.textContent = text;
  if (value === undefined || value === null || Number.isNaN(value)) el.removeAttribute("data-value");
  else el.setAttribute("data-value", String(value));
}
function fmtMs(ms) {
  if (ms === null) return "—";
  if (ms >= 1000) return (ms / 1000).toFixed(ms >= 10000 ? 0 : 2) + " s";
  return (ms >= 10 ? ms.toFixed(0) : ms.toFixed(1)) + " ms";
}
function fmtUSD(x) {
  if (x === undefined || x === null) return "—";
  if (x === 0) return "$0";
  return "$" + (Math.abs(x) >= 1 ? x.toFixed(2) : x.toFixed(6).replace(/(\.\d\d\d*?)0+$/, "$1"));
}
function fmtInt(n) { return Number(n).toLocaleString("en-US"); }
function fmtPct(x) { return x === null ? "—" : (x * 100).toFixed(1) + "%"; }
function cell(tr, text, cls) {
  const td = document.createElement("td");
  td.textContent = text;
  if (cls) td.className = cls;
  tr.appendChild(td);
  return td;
}
function fillRows(tbodyID, rows, columns, emptyText, decorate) {
  const body = $(tbodyID);
  body.replaceChildren();
  if (rows.length === 0) {
    const tr = document.createElement("tr");
    const td = cell(tr, emptyText, "empty");
    td.colSpan = columns;
    body.appendChild(tr);
    return;
  }
  for (const row of rows) {
    const tr = document.createElement("tr");
    decorate(tr, row);
    body.appendChild(tr);
  }
}

// Prometheus' histogram_quantile: the rank's bucket, linear inside it; the open top bucket
// answers its lower bound.
function percentile(q, counts, bounds) {
  const total = counts.reduce((a, b) => a + b, 0);
  if (total === 0) return null;
  const rank = q * total;
  let below = 0;
  for (let i = 0; i < counts.length; i++) {
    if (counts[i] > 0 && below + counts[i] >= rank) {
      const low = i === 0 ? 0 : bounds[i - 1];
      if (i >= bounds.length) return low;
      return low + (bounds[i] - low) * (rank - below) / counts[i];
    }
    below += counts[i];
  }
  return bounds[bounds.length - 1];
}
// The newest sample and the oldest one no older than `span` before it.
function windowOf(span, end) {
  const last = samples[end === undefined ? samples.length - 1 : end];
  let first = last;
  for (let i = samples.indexOf(last) - 1; i >= 0 && last.t - samples[i].t <= span; i--) first = samples[i];
  return [first, last];
}
function rate(first, last, key) {
  const dt = (last.t - first.t) / 1000;
  return dt > 0 ? (last[key] - first[key]) / dt : null;
}
function deltaBuckets(first, last) { return last.buckets.map((n, i) => n - first.buckets[i]); }

function addSample(s) {
  const c = s.requests.by_class;
  const sample = { t: s.now_ms, started: s.started, finished: s.requests.finished,
    bad: c["4xx"] + c["5xx"] + s.requests.cut, buckets: s.latency.buckets };
  const prev = samples[samples.length - 1];
  // A restarted daemon counts from zero again: start over rather than draw negative rates.
  if (prev && (prev.started !== sample.started || prev.finished > sample.finished)) samples = [];
  samples.push(sample);
  while (samples.length > 2 && sample.t - samples[0].t > HISTORY_MS + 2 * every) samples.shift();
}

function render(s) {
  addSample(s);
  const bounds = s.latency.bounds_ms;
  lastBounds = bounds;
  const [rf, rl] = windowOf(RATE_MS);
  const rps = rate(rf, rl, "finished");
  setFigure("rps", rps === null ? "—" : rps.toFixed(rps >= 100 ? 0 : 1), rps);
  setFigure("in-flight", fmtInt(s.requests.in_flight), s.requests.in_flight);
  const [pf, pl] = windowOf(PERCENTILE_MS);
  const window = deltaBuckets(pf, pl);
  for (const q of [50, 95, 99]) {
    const v = pf === pl ? null : percentile(q / 100, window, bounds);
    setFigure("p" + q, fmtMs(v), v);
  }
  setFigure("requests-total", fmtInt(s.requests.finished), s.requests.finished);
  setFigure("errors-total", fmtInt(s.errors.recorded), s.errors.recorded);
  renderCache(s);
  renderSpend(s.spend);
  renderDeployments(s);
  renderErrors(s.errors.recent);
  drawCharts(bounds);
  const up = Math.max(0, Math.round(s.now_ms / 1000 - s.started));
  $("uptime").textContent = up >= 86400 ? Math.floor(up / 86400) + "d " + Math.floor(up % 86400 / 3600) + "h"
    : up >= 3600 ? Math.floor(up / 3600) + "h " + Math.floor(up % 3600 / 60) + "m" : Math.floor(up / 60) + "m " + up % 60 + "s";
  $("updated").textContent = new Date(s.now_ms).toLocaleTimeString();
}

function renderCache(s) {
  const cache = s.cache;
  const today = (cache.days || []).filter((d) => d.day === s.spend.day);
  const sum = (rows, k) => rows.reduce((a, r) => a + r[k], 0);
  const answerable = sum(today, "hits") + sum(today, "coalesced") + sum(today, "misses");
  const ratio = answerable === 0 ? null : (sum(today, "hits") + sum(today, "coalesced")) / answerable;
  if (cache.mode === "off") setFigure("hit-ratio", "off", null);
  else setFigure("hit-ratio", fmtPct(ratio), ratio);
  const r = cache.results;
  $("cache-mode").textContent = cache.mode === "off" ? "cache off"
    : "since start: " + fmtInt(r.hit) + " hits, " + fmtInt(r.coalesced) + " shared, " + fmtInt(r.miss) + " misses" + (cache.database_ok === false ? " (database unavailable)" : "");
  const usd = sum(today, "usd_saved"), tokens = sum(today, "prompt_tokens_saved") + sum(today, "completion_tokens_saved");
  setFigure("saved-today-usd", cache.mode === "off" ? "—" : fmtUSD(usd), cache.mode === "off" ? null : usd);
  setFigure("saved-today-tokens", cache.mode === "off" ? "—" : fmtInt(tokens), cache.mode === "off" ? null : tokens);
  fillRows("cache-days", cache.days || [], 8, cache.mode === "off" ? "the cache is off" : "nothing counted yet", (tr, d) => {
    tr.dataset.day = d.day;
    tr.dataset.model = d.model;
    cell(tr, d.day); cell(tr, d.model);
    cell(tr, fmtInt(d.hits), "num"); cell(tr, fmtInt(d.coalesced), "num"); cell(tr, fmtInt(d.misses), "num");
    cell(tr, fmtPct(d.hits + d.coalesced + d.misses === 0 ? null : d.hit_ratio), "num");
    cell(tr, fmtInt(d.prompt_tokens_saved + d.completion_tokens_saved), "num");
    cell(tr, fmtUSD(d.usd_saved), "num");
  });
  cacheDays = [];
  for (const d of cache.days || []) {
    let day = cacheDays.find((x) => x.day === d.day);
    if (!day) { day = { day: d.day, hits: 0, answerable: 0, usd: 0 }; cacheDays.push(day); }
    day.hits += d.hits + d.coalesced;
    day.answerable += d.hits + d.coalesced + d.misses;
    day.usd += d.usd_saved;
  }
  cacheDays.sort((a, b) => a.day < b.day ? -1 : 1);
}

function renderSpend(spend) {
  setFigure("spend-today", fmtUSD(spend.today_usd), spend.today_usd);
  setFigure("spend-month", fmtUSD(spend.month_usd), spend.month_usd);
  const b = spend.budgets, box = $("budgets");
  box.replaceChildren();
  const line = (id, label, spent, reserved, limit) => {
    const p = document.createElement("div");
    const used = (spent + reserved) / limit;
    p.id = id;
    p.dataset.value = String(used);
    p.textContent = label + ": " + fmtUSD(spent) + " of " + fmtUSD(limit) + " (" + (used * 100).toFixed(1) + "%)"
      + (reserved > 0 ? ", " + fmtUSD(reserved) + " reserved by requests in flight" : "");
    const bar = document.createElement("div"), fill = document.createElement("div");
    bar.className = "bar";
    fill.style.width = Math.min(100, used * 100).toFixed(1) + "%";
    if (used >= 1) fill.className = "over"; else if (used * 100 >= b.alert_percent) fill.className = "warn";
    bar.appendChild(fill);
    box.append(p, bar);
  };
  if (b.daily_usd !== undefined) line("budget-day", "today", b.spent_day_usd, b.reserved_day_usd, b.daily_usd);
  if (b.monthly_usd !== undefined) line("budget-month", "this month", b.spent_month_usd, b.reserved_month_usd, b.monthly_usd);
  const notes = [];
  if (b.client_daily_usd !== undefined) notes.push("each client: " + fmtUSD(b.client_daily_usd) + " a day");
  if (b.closed) notes.push("closed: " + b.closed);
  if (b.daily_usd === undefined && b.monthly_usd === undefined && b.client_daily_usd === undefined) notes.push("no [budgets] configured");
  if (spend.source === "none") notes.push("spend is not counted: the cache is off and no budget is set");
  for (const n of notes) { const p = document.createElement("p"); p.className = "note"; p.textContent = n; box.appendChild(p); }
  fillRows("spend-models", spend.models || [], 5, spend.source === "database" ? "nothing spent this month" : "per-model spend needs the cache database", (tr, m) => {
    tr.dataset.model = m.model;
    cell(tr, m.model); cell(tr, fmtInt(m.today_requests), "num");
    cell(tr, fmtInt(m.today_prompt_tokens + m.today_completion_tokens), "num");
    cell(tr, fmtUSD(m.today_usd), "num"); cell(tr, fmtUSD(m.month_usd), "num");
  });
}

function renderDeployments(s) {
  fillRows("deployments", s.deployments, 7, "no [[models]] groups configured", (tr, d) => {
    tr.dataset.group = d.group;
    tr.dataset.deployment = d.deployment;
    tr.dataset.health = d.health;
    cell(tr, d.group); cell(tr, d.deployment);
    const badge = document.createElement("span");
    badge.className = "badge " + d.health;
    badge.textContent = d.health;
    cell(tr, "").appendChild(badge);
    cell(tr, fmtInt(d.in_flight) + (d.max_concurrency ? " / " + d.max_concurrency : ""), "num");
    cell(tr, d.ewma_ms > 0 ? fmtMs(d.ewma_ms) : "—", "num");
    cell(tr, d.ejected_for_ms !== undefined ? fmtMs(d.ejected_for_ms) : "—", "num");
    cell(tr, String(d.weight), "num");
  });
  const waiting = Object.entries(s.queues).filter(([, n]) => n > 0).map(([g, n]) => g + ": " + n + " waiting");
  const problems = s.upstreams.filter((u) => u.problem).map((u) => "upstream " + u.name + ": " + u.problem);
  $("upstreams").textContent = [...waiting, ...problems].join(" · ") || "upstreams: " + (s.upstreams.map((u) => u.name).join(", ") || "none");
}

function renderErrors(recent) {
  fillRows("errors", recent, 7, "no errors since the start", (tr, e) => {
    tr.dataset.code = e.code;
    tr.dataset.status = String(e.status);
    cell(tr, new Date(e.time_ms).toLocaleTimeString());
    cell(tr, e.status === 0 ? "cut" : String(e.status), "num");
    cell(tr, e.code); cell(tr, e.message, "msg");
    cell(tr, e.model || "—"); cell(tr, e.path); cell(tr, e.upstream || "—");
  });
}

// Charts: canvases sized to their box in device pixels, drawn whole on every poll.
function prepare(canvas) {
  const ratio = window.devicePixelRatio || 1, w = canvas.clientWidth, h = canvas.clientHeight;
  if (canvas.width !== Math.round(w * ratio) || canvas.height !== Math.round(h * ratio)) {
    canvas.width = Math.round(w * ratio);
    canvas.height = Math.round(h * ratio);
  }
  const g = canvas.getContext("2d");
  g.setTransform(ratio, 0, 0, ratio, 0, 0);
  g.clearRect(0, 0, w, h);
  return [g, w, h];
}
function css(name) { return getComputedStyle(document.documentElement).getPropertyValue(name).trim(); }
function niceMax(v) {
  if (!(v > 0)) return 1;
  const p = Math.pow(10, Math.floor(Math.log10(v)));
  // Four gridlines: maxima whose quarters are round numbers.
  for (const m of [1, 2, 4, 6, 8, 10]) if (v <= m * p) return m * p;
  return 10 * p;
}
function axes(g, w, h, max, format, left) {
  g.strokeStyle = css("--line"); g.fillStyle = css("--mute"); g.lineWidth = 1;
  g.font = "11px system-ui, sans-serif"; g.textAlign = "right"; g.textBaseline = "middle";
  for (let i = 0; i <= 4; i++) {
    const y = 8 + (h - 28) * (1 - i / 4);
    g.beginPath(); g.moveTo(left, y); g.lineTo(w - 4, y); g.stroke();
    g.fillText(format(max * i / 4).replace(/\.0+(?=\D*$)/, ""), left - 4, y);
  }
}
function lineChart(canvas, series, format) {
  const [g, w, h] = prepare(canvas);
  const left = 52, t1 = samples.length ? samples[samples.length - 1].t : 0, t0 = t1 - HISTORY_MS;
  const max = niceMax(Math.max(0, ...series.flatMap((s) => s.points.map((p) => p[1]))));
  axes(g, w, h, max, format, left);
  g.textBaseline = "top";
  for (const m of [5, 4, 3, 2, 1, 0]) {
    g.textAlign = m === 5 ? "left" : m === 0 ? "right" : "center";
    g.fillText(m === 0 ? "now" : "-" + m + "m", left + (w - 4 - left) * (1 - m / 5), h - 16);
  }
  for (const s of series) {
    g.strokeStyle = s.color; g.lineWidth = 2; g.beginPath();
    let started = false;
    for (const [t, v] of s.points) {
      if (v === null) { started = false; continue; }
      const x = left + (w - 4 - left) * (t - t0) / HISTORY_MS, y = 8 + (h - 28) * (1 - v / max);
      if (started) g.lineTo(x, y); else g.moveTo(x, y);
      started = true;
    }
    g.stroke();
  }
}
function cacheChart(canvas) {
  const [g, w, h] = prepare(canvas);
  const left = 44;
  axes(g, w, h, 1, (v) => (v * 100).toFixed(0) + "%", left);
  if (cacheDays.length === 0) return;
  const slot = (w - 4 - left) / cacheDays.length, bar = Math.min(48, slot * 0.6);
  g.textAlign = "center";
  cacheDays.forEach((d, i) => {
    const ratio = d.answerable === 0 ? 0 : d.hits / d.answerable;
    const x = left + slot * i + slot / 2, top = 8 + (h - 28) * (1 - ratio);
    g.fillStyle = css("--c1");
    g.fillRect(x - bar / 2, top, bar, 8 + (h - 28) - top);
    g.fillStyle = css("--mute"); g.textBaseline = "top";
    g.fillText(d.day.slice(5), x, h - 16);
    g.fillStyle = css("--ink"); g.textBaseline = "bottom";
    g.fillText(fmtUSD(d.usd), x, Math.max(20, top - 2));
  });
}
function drawCharts(bounds) {
  const rps = [], bad = [], p50 = [], p95 = [], p99 = [];
  for (let i = 1; i < samples.length; i++) {
    const a = samples[i - 1], b = samples[i];
    rps.push([b.t, rate(a, b, "finished")]);
    bad.push([b.t, rate(a, b, "bad")]);
    const [f, l] = windowOf(RATE_MS, i);
    const counts = deltaBuckets(f, l);
    for (const [q, out] of [[0.5, p50], [0.95, p95], [0.99, p99]]) out.push([b.t, percentile(q, counts, bounds)]);
  }
  lineChart($("chart-rps"), [{ color: css("--c1"), points: rps }, { color: css("--bad"), points: bad }], (v) => v.toFixed(v >= 10 ? 0 : v >= 1 ? 1 : 2));
  lineChart($("chart-latency"), [{ color: css("--c1"), points: p50 }, { color: css("--c2"), points: p95 }, { color: css("--c3"), points: p99 }],
    (v) => v >= 1000 ? (v / 1000).toFixed(1) + "s" : v.toFixed(0));
  cacheChart($("chart-cache"));
}

async function poll() {
  try {
    const response = await fetch("stats/live", { cache: "no-store", credentials: "same-origin" });
    if (!response.ok) throw new Error("HTTP " + response.status);
    render(await response.json());
    polls += 1;
    setFigure("polls", String(polls), polls);
    $("status").textContent = "live, every " + (every / 1000) + " s";
    $("status").className = "meta ok";
  } catch (e) {
    $("status").textContent = "reconnecting… (" + e.message + ")";
    $("status").className = "meta bad";
  } finally {
    setTimeout(poll, every);
  }
}
window.addEventListener("resize", () => { if (samples.length) drawCharts(lastBounds); });
poll();
"""#
}

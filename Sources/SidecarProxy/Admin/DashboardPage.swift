import NIOCore

/// The page of `GET /ui`: one self-contained HTML document, compiled into the binary (no files
/// to install, no CDN, nothing built at run time). Its script (`DashboardPage.script`) polls
/// `stats/live` and draws the charts on canvases by hand; the styles fit a phone's width as well
/// as a laptop's. Every figure a test or a person may want to read has a stable `id` and its raw
/// number in `data-value`.
enum DashboardPage {
    /// The whole page, made once.
    static let bytes = ByteBuffer(string: html.replacingOccurrences(of: "/*SCRIPT*/", with: script))

    private static let html = #"""
<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<link rel="icon" href="data:,">
<title>llm-sidecar</title>
<style>
:root { --bg:#f6f7f9; --card:#fff; --ink:#1d2330; --mute:#687083; --line:#e3e6ec;
  --ok:#1f9d55; --warn:#c98a06; --bad:#d23c3c; --c1:#2f6fdb; --c2:#9b51e0; --c3:#e0792b; }
@media (prefers-color-scheme: dark) {
  :root { --bg:#12151b; --card:#1b2029; --ink:#e6e9ef; --mute:#9aa3b5; --line:#2c3340; }
}
* { box-sizing:border-box; }
body { margin:0; font:14px/1.4 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif; background:var(--bg); color:var(--ink); }
header { display:flex; flex-wrap:wrap; gap:.5rem 1rem; align-items:baseline; padding:.75rem 1rem; border-bottom:1px solid var(--line); background:var(--card); }
header h1 { font-size:1.1rem; margin:0; }
header .meta { color:var(--mute); font-size:.85rem; }
#status { font-weight:600; }
#status.ok { color:var(--ok); } #status.bad { color:var(--bad); }
main { padding:1rem; display:grid; gap:1rem; max-width:1400px; margin:0 auto; }
.tiles { display:grid; grid-template-columns:repeat(auto-fill,minmax(140px,1fr)); gap:.75rem; }
.tile, section { background:var(--card); border:1px solid var(--line); border-radius:8px; }
.tile { padding:.6rem .65rem; min-width:0; }
.tile .label { color:var(--mute); font-size:.75rem; text-transform:uppercase; letter-spacing:.04em; }
.tile .value { font-size:1.25rem; font-weight:650; font-variant-numeric:tabular-nums; white-space:nowrap; overflow:hidden; text-overflow:ellipsis; }
.tile .sub { color:var(--mute); font-size:.8rem; }
section { padding:.75rem 1rem; min-width:0; }
section h2 { font-size:.95rem; margin:0 0 .5rem; }
.grid2 { display:grid; grid-template-columns:repeat(auto-fit,minmax(320px,1fr)); gap:1rem; }
canvas { width:100%; height:180px; display:block; }
.legend { display:flex; gap:1rem; font-size:.8rem; color:var(--mute); margin-bottom:.25rem; flex-wrap:wrap; }
.legend i { display:inline-block; width:.8rem; height:.2rem; vertical-align:middle; margin-right:.3rem; }
.scroll { overflow-x:auto; }
table { border-collapse:collapse; width:100%; font-variant-numeric:tabular-nums; }
th, td { text-align:left; padding:.3rem .5rem; border-bottom:1px solid var(--line); white-space:nowrap; }
th { color:var(--mute); font-weight:600; font-size:.8rem; }
td.num, th.num { text-align:right; }
td.msg { white-space:normal; min-width:16rem; max-width:40rem; word-break:break-word; }
.badge { padding:.05rem .45rem; border-radius:1rem; font-size:.8rem; color:#fff; background:var(--mute); }
.badge.healthy { background:var(--ok); } .badge.half-open { background:var(--warn); } .badge.ejected { background:var(--bad); }
.bar { height:.6rem; background:var(--line); border-radius:.3rem; overflow:hidden; margin:.25rem 0 .6rem; }
.bar > div { height:100%; width:0; background:var(--ok); }
.bar > div.warn { background:var(--warn); } .bar > div.over { background:var(--bad); }
.empty { color:var(--mute); font-style:italic; }
.note { color:var(--mute); font-size:.8rem; margin:.25rem 0 0; }
@media (max-width:600px) {
  main { padding:.5rem; gap:.5rem; }
  .tiles { grid-template-columns:repeat(2,minmax(0,1fr)); gap:.5rem; }
  .tile .value { font-size:1.15rem; }
  canvas { height:150px; }
  section { padding:.5rem .6rem; }
}
</style>
</head>
<body>
<header>
  <h1>llm-sidecar</h1>
  <span id="status" class="meta">connecting…</span>
  <span class="meta">updated <span id="updated">—</span></span>
  <span class="meta">up <span id="uptime">—</span></span>
  <span class="meta">polls: <span id="polls" data-value="0">0</span></span>
</header>
<main>
  <div class="tiles">
    <div class="tile"><div class="label">requests / s</div><div class="value" id="rps">—</div><div class="sub"><span id="in-flight">—</span> in flight</div></div>
    <div class="tile"><div class="label">latency p50</div><div class="value" id="p50">—</div><div class="sub">last minute</div></div>
    <div class="tile"><div class="label">latency p95</div><div class="value" id="p95">—</div><div class="sub">last minute</div></div>
    <div class="tile"><div class="label">latency p99</div><div class="value" id="p99">—</div><div class="sub">last minute</div></div>
    <div class="tile"><div class="label">requests</div><div class="value" id="requests-total">—</div><div class="sub"><span id="errors-total">—</span> errors recorded</div></div>
    <div class="tile"><div class="label">cache hit ratio today</div><div class="value" id="hit-ratio">—</div><div class="sub" id="cache-mode">—</div></div>
    <div class="tile"><div class="label">saved today</div><div class="value" id="saved-today-usd">—</div><div class="sub"><span id="saved-today-tokens">—</span> tokens</div></div>
    <div class="tile"><div class="label">spend today</div><div class="value" id="spend-today">—</div><div class="sub">month <span id="spend-month">—</span></div></div>
  </div>
  <div class="grid2">
    <section><h2>Requests per second</h2>
      <div class="legend"><span><i style="background:var(--c1)"></i>all</span><span><i style="background:var(--bad)"></i>4xx/5xx and cut</span></div>
      <canvas id="chart-rps"></canvas></section>
    <section><h2>Latency (ms)</h2>
      <div class="legend"><span><i style="background:var(--c1)"></i>p50</span><span><i style="background:var(--c2)"></i>p95</span><span><i style="background:var(--c3)"></i>p99</span></div>
      <canvas id="chart-latency"></canvas></section>
  </div>
  <div class="grid2">
    <section><h2>Budgets</h2><div id="budgets"></div></section>
    <section><h2>Cache: hit ratio and dollars saved per day</h2><canvas id="chart-cache"></canvas></section>
  </div>
  <section><h2>Cache per day and model</h2><div class="scroll"><table>
    <thead><tr><th>day</th><th>model</th><th class="num">hits</th><th class="num">shared</th><th class="num">misses</th><th class="num">hit ratio</th><th class="num">tokens saved</th><th class="num">$ saved</th></tr></thead>
    <tbody id="cache-days"></tbody></table></div></section>
  <section><h2>Spend by model</h2><div class="scroll"><table>
    <thead><tr><th>model</th><th class="num">requests today</th><th class="num">tokens today</th><th class="num">today</th><th class="num">this month</th></tr></thead>
    <tbody id="spend-models"></tbody></table></div></section>
  <section><h2>Deployments</h2><div class="scroll"><table>
    <thead><tr><th>group</th><th>deployment</th><th>state</th><th class="num">in flight</th><th class="num">EWMA latency</th><th class="num">ejected for</th><th class="num">weight</th></tr></thead>
    <tbody id="deployments"></tbody></table></div><div id="upstreams" class="note"></div></section>
  <section><h2>Last errors</h2><div class="scroll"><table>
    <thead><tr><th>time</th><th class="num">status</th><th>code</th><th>message</th><th>model</th><th>path</th><th>upstream</th></tr></thead>
    <tbody id="errors"></tbody></table></div></section>
</main>
<script>
/*SCRIPT*/
</script>
</body>
</html>
"""#
}

"""The live view's single HTML page (no external resources): polls ``live/data.json`` each
second and draws the charts as inline SVG; frames come from ``live/frame.png?id=N``."""

from __future__ import annotations

PAGE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>hitstream live</title>
<style>
  :root { --bg: #111418; --panel: #1b2027; --text: #e6e6e6; --dim: #8b949e; --ok: #3fb950;
          --bad: #f85149; --mask: rgb(0, 204, 204); --hot: rgb(77, 255, 26); }
  * { box-sizing: border-box; }
  body { margin: 0; padding: 12px 18px; background: var(--bg); color: var(--text);
         font: 14px/1.35 system-ui, sans-serif; }
  header { display: flex; gap: 18px; align-items: baseline; flex-wrap: wrap; }
  h1 { font-size: 20px; margin: 0 12px 0 0; }
  h2 { font-size: 15px; margin: 0 0 6px; }
  .dim { color: var(--dim); }
  #state.ok { color: var(--ok); } #state.bad { color: var(--bad); }
  #warnings { color: var(--bad); margin: 0.5em 1em; }
  .tiles { display: flex; gap: 10px; margin: 12px 0; flex-wrap: wrap; }
  .tile { background: var(--panel); border-radius: 6px; padding: 8px 14px; min-width: 130px; }
  .tile .v { font-size: 26px; font-weight: 600; font-variant-numeric: tabular-nums; }
  .tile .k { color: var(--dim); font-size: 12px; }
  .grid { display: grid; grid-template-columns: minmax(0, 2fr) minmax(0, 1fr); gap: 10px; }
  .panel { background: var(--panel); border-radius: 6px; padding: 8px 12px; }
  svg { width: 100%; height: auto; display: block; }
  svg text { fill: var(--dim); font-size: 11px; }
  .legend span { display: inline-block; margin-right: 12px; font-size: 12px; }
  .legend i { display: inline-block; width: 10px; height: 10px; margin-right: 4px;
              vertical-align: middle; }
  table { border-collapse: collapse; width: 100%; font-variant-numeric: tabular-nums; }
  td, th { padding: 2px 6px; text-align: right; }
  td:first-child, th:first-child { text-align: left; }
  th { color: var(--dim); font-weight: normal; }
  .classes { display: grid; gap: 10px; margin-top: 10px;
             grid-template-columns: repeat(auto-fill, minmax(660px, 1fr)); }
  .row { display: flex; gap: 8px; flex-wrap: wrap; min-height: 40px; }
  figure { margin: 0; width: 150px; }
  figure img { width: 150px; height: 150px; image-rendering: pixelated; background: #000;
               display: block; }
  figcaption { font-size: 11px; color: var(--dim); }
  figcaption b { color: var(--text); font-weight: 600; }
</style>
</head>
<body>
<header>
  <h1>hitstream live</h1>
  <span>model <b id="model-name">–</b> version <b id="model-version">–</b></span>
  <span>provider <b id="provider">–</b></span>
  <span id="state" class="dim">connecting…</span>
</header>
<p id="warnings" class="bad" hidden></p>
<section class="tiles">
  <div class="tile"><div class="v" id="fps">–</div><div class="k">frames/s (last 5 s)</div></div>
  <div class="tile"><div class="v" id="hit-rate">–</div><div class="k">hit rate (last 10 s)</div>
  </div>
  <div class="tile"><div class="v" id="classified">–</div><div class="k">frames classified</div>
  </div>
  <div class="tile"><div class="v" id="kept">–</div><div class="k">frames kept</div></div>
  <div class="tile"><div class="v" id="lost">–</div><div class="k">dropped + refused</div></div>
</section>
<section class="grid">
  <div class="panel">
    <h2>Class fractions and hit rate <span class="dim" id="span"></span></h2>
    <svg id="chart-classes" viewBox="0 0 800 200" role="img"></svg>
    <div class="legend" id="legend"></div>
    <h2 style="margin-top:8px">Throughput <span class="dim">(frames/s, 1 s bins)</span></h2>
    <svg id="chart-fps" viewBox="0 0 800 110" role="img"></svg>
  </div>
  <div class="panel">
    <h2>Drops by reason</h2>
    <table><thead><tr><th>reason</th><th>frames</th><th>per s</th></tr></thead>
      <tbody id="drops"></tbody></table>
    <p class="dim">Frames: log scale (magma);
      <span style="color:var(--mask)">■</span> invalid pixels (gap, beam-stop hole, NaN);
      <span style="color:var(--hot)">■</span> hot pixels the model caps.
      Each class shows its latest frames (the most confident of a batch), newest first.</p>
  </div>
</section>
<section class="classes" id="classes"></section>
<script>
"use strict";
const COLORS = ["#4e79a7", "#f28e2b", "#59a14f", "#e15759", "#b07aa1", "#edc948", "#76b7b2",
                "#ff9da7"];
const W = 800, PADL = 40, PADR = 8;
const TICKS = [10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600];
let previous = null;  // the last snapshot, for drop rates
const $ = (id) => document.getElementById(id);
const esc = (s) => String(s).replace(/[&<>"']/g, (c) => "&#" + c.charCodeAt(0) + ";");
const num = (v) => Math.round(v).toLocaleString("en-US");

// the time axis spans the data so far (at least 1 min), up to the history kept
function spanOf(d) {
  const seen = d.series.t.length ? 1 - d.series.t[0] : 0;
  return Math.min(d.history_s, Math.max(60, Math.ceil(seen / 60) * 60));
}

function xOf(t, span) { return PADL + (W - PADL - PADR) * (1 + t / span); }

function ago(s) { return s === 0 ? "now" : s < 60 ? `-${s} s` : `-${s / 60} min`; }

function axes(h, top, bottom, ticks, span) {
  let s = "";
  for (const [v, label] of ticks) {
    const y = bottom - (bottom - top) * v;
    s += `<line x1="${PADL}" x2="${W - PADR}" y1="${y}" y2="${y}" stroke="#333"/>` +
         `<text x="${PADL - 4}" y="${y + 4}" text-anchor="end">${label}</text>`;
  }
  const step = TICKS.find((t) => span / t <= 10) || span;
  for (let t = 0; t <= span; t += step) {
    s += `<text x="${xOf(-t, span)}" y="${h - 2}" text-anchor="middle">${ago(t)}</text>`;
  }
  return s;
}

function classChart(d) {
  const h = 200, top = 6, bottom = h - 16, span = spanOf(d), S = d.series;
  const agg = Math.max(1, Math.round(span / 120));  // seconds per bar
  $("span").textContent = `(${agg} s bins)`;
  const buckets = new Map();
  S.t.forEach((t, i) => {
    if (t <= -span) return;
    const k = Math.floor(t / agg);
    const b = buckets.get(k) || { total: 0, hits: 0, counts: d.classes.map(() => 0) };
    b.total += S.total[i]; b.hits += S.hits[i];
    d.classes.forEach((c, j) => { b.counts[j] += S.counts[c][i]; });
    buckets.set(k, b);
  });
  let s = axes(h, top, bottom, [[0, "0%"], [0.5, "50%"], [1, "100%"]], span);
  const bw = (W - PADL - PADR) * agg / span;
  const line = [];
  for (const [k, b] of [...buckets.entries()].sort((a, z) => a[0] - z[0])) {
    if (!b.total) continue;
    const x = xOf(k * agg, span);
    let y = bottom;
    b.counts.forEach((n, j) => {
      const hh = (bottom - top) * n / b.total;
      y -= hh;
      if (hh > 0) s += `<rect x="${x}" y="${y}" width="${bw}" height="${hh}" ` +
                       `fill="${COLORS[j % COLORS.length]}" opacity="0.75"/>`;
    });
    line.push(`${x + bw / 2},${bottom - (bottom - top) * b.hits / b.total}`);
  }
  if (line.length) s += `<polyline points="${line.join(" ")}" fill="none" stroke="#fff" ` +
                        `stroke-width="2"/>`;
  $("chart-classes").innerHTML = s;
  $("legend").innerHTML = d.classes.map((c, j) =>
    `<span><i style="background:${COLORS[j % COLORS.length]}"></i>${esc(c)} ` +
    `${(100 * d.class_fraction[c]).toFixed(1)}%</span>`).join("") +
    `<span><i style="background:#fff"></i>hit rate (${d.hit_classes.map(esc).join(", ")})</span>`;
}

function fpsChart(d) {
  const h = 110, top = 6, bottom = h - 16, span = spanOf(d), S = d.series;
  const n = S.t.length - 1;  // the current second is still filling: leave it out
  const first = S.t.findIndex((t) => t > -span);
  const peak = Math.max(1, ...S.total.slice(first, n));
  const step = Math.pow(10, Math.floor(Math.log10(peak)));
  const ymax = Math.ceil(peak / step) * step;
  let s = axes(h, top, bottom, [[0, "0"], [0.5, num(ymax / 2)], [1, num(ymax)]], span);
  const pts = [];
  for (let i = Math.max(0, first); i < n; i++) {
    pts.push(`${xOf(S.t[i], span)},${bottom - (bottom - top) * S.total[i] / ymax}`);
  }
  if (pts.length) s += `<polyline points="${pts.join(" ")}" fill="none" stroke="#58a6ff" ` +
                       `stroke-width="1.5"/>`;
  $("chart-fps").innerHTML = s;
}

function drops(d, dt) {
  const rows = [];
  for (const [kind, table] of [["dropped", d.dropped], ["refused", d.rejected]]) {
    for (const [reason, n] of Object.entries(table)) {
      const before = previous && previous[kind === "dropped" ? "dropped" : "rejected"][reason];
      const rate = previous && dt > 0 ? (n - (before || 0)) / dt : 0;
      rows.push(`<tr><td>${esc(reason)} <span class="dim">(${kind})</span></td>` +
                `<td>${num(n)}</td><td>${rate.toFixed(1)}</td></tr>`);
    }
  }
  $("drops").innerHTML = rows.join("") || `<tr><td class="dim">none</td><td></td><td></td></tr>`;
  const lost = [...Object.values(d.dropped), ...Object.values(d.rejected)]
    .reduce((a, b) => a + b, 0);
  $("lost").textContent = num(lost);
}

function figure(c, f) {
  const fig = document.createElement("figure");
  fig.dataset.id = f.id;
  const img = document.createElement("img");
  img.className = "frame";
  img.alt = `${c} frame, train ${f.train_id} pulse ${f.pulse_id}`;
  img.src = "live/frame.png?id=" + f.id;
  const link = document.createElement("a");  // full size in a new tab
  link.href = img.src;
  link.target = "_blank";
  link.append(img);
  const cap = document.createElement("figcaption");
  fig.append(link, cap);
  return fig;
}

function frames(d) {
  const root = $("classes");
  d.classes.forEach((c, j) => {
    let box = root.querySelector(`[data-class="${CSS.escape(c)}"]`);
    if (!box) {
      box = document.createElement("div");
      box.className = "panel";
      box.dataset.class = c;
      const h = document.createElement("h2");
      const row = document.createElement("div");
      row.className = "row";
      box.append(h, row);
      root.append(box);
    }
    const [h, row] = box.children;
    const list = d.frames[c] || [];
    h.innerHTML = `<i style="color:${COLORS[j % COLORS.length]}">■</i> ${esc(c)} ` +
      `<span class="dim">${(100 * d.class_fraction[c]).toFixed(1)}% of the last 10 s` +
      `${list.length ? "" : " · no frame yet"}</span>`;
    const old = new Map([...row.children].map((e) => [Number(e.dataset.id), e]));
    const figs = list.map((f) => {
      const fig = old.get(f.id) || figure(c, f);
      fig.lastChild.innerHTML = `<b>train ${f.train_id}</b> · pulse ${f.pulse_id}<br>` +
        `p = ${f.probability.toFixed(3)}${f.kept ? " · kept" : ""} · ${f.age_s.toFixed(0)} s ago`;
      return fig;
    });
    row.replaceChildren(...figs);
  });
  for (const box of [...root.children]) {
    if (!d.classes.includes(box.dataset.class)) box.remove();
  }
}

function render(d, dt) {
  $("model-name").textContent = d.model.name || "–";
  $("model-version").textContent = d.model.version || "–";
  $("provider").textContent = d.engine.provider || "–";
  $("fps").textContent = d.frames_per_s.toFixed(1);
  $("hit-rate").textContent = (100 * d.hit_rate).toFixed(1) + "%";
  $("classified").textContent = num(d.totals.classified);
  $("kept").textContent = num(d.totals.kept);
  const warn = $("warnings");
  warn.textContent = (d.warnings || []).join(" · ");
  warn.hidden = !warn.textContent;
  const state = $("state");
  state.textContent = d.up ? "running" : "stopped";
  state.className = d.up ? "ok" : "dim";
  classChart(d);
  fpsChart(d);
  drops(d, dt);
  frames(d);
}

async function tick() {
  try {
    const r = await fetch("live/data.json", { cache: "no-store" });
    if (!r.ok) throw new Error("HTTP " + r.status);
    const d = await r.json();
    const now = performance.now();
    render(d, previous ? (now - previous.at) / 1000 : 0);
    previous = { at: now, dropped: d.dropped, rejected: d.rejected };
  } catch (e) {
    const state = $("state");
    state.textContent = "no connection to the streamer (" + e.message + ")";
    state.className = "bad";
  } finally {
    setTimeout(tick, 1000);
  }
}
tick();
</script>
</body>
</html>
"""

// The live page of the streamer (live.html): polls live/data.json each second, draws the
// charts as inline SVG, and shows the latest frames of each class (live/frame.png?id=N) and
// the run's background (live/background.png?v=VERSION).
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
  const b = d.balance;
  $("balance").textContent = b ? `received ${num(b.received)} = classified ` +
    `${num(b.classified)} + refused ${num(b.rejected)} + dropped ${num(b.dropped)} + ` +
    `in flight ${num(b.in_flight)}` : "";
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

// the run's background in use: level, warm state, and its map (fetched once per version)
function background(d) {
  const b = d.background, img = $("background-map"), state = $("background-state");
  if (!b) {
    state.textContent = "(no estimate)";
    state.className = "dim";
    img.hidden = true;
    return;
  }
  state.textContent = b.warm ? "warm" : "warming up";
  state.className = b.warm ? "ok" : "warn";
  $("background-level").textContent = b.level.toPrecision(3);
  $("background-version").textContent = String(b.version);
  $("background-frames").textContent = num(b.frames);
  const src = "live/background.png?v=" + b.version;
  if (img.getAttribute("src") !== src) {
    img.src = src;
    $("background-link").href = src;
  }
  img.hidden = false;
}

function render(d, dt) {
  $("model-name").textContent = d.model.name || "–";
  $("model-version").textContent = d.model.version || "–";
  $("provider").textContent = d.engine.provider || "–";
  $("fps").textContent = d.frames_per_s.toFixed(1);
  $("hit-rate").textContent = (100 * d.hit_rate).toFixed(1) + "%";
  $("classified").textContent = num(d.totals.classified);
  $("kept").textContent = num(d.totals.kept);
  const alerts = $("alerts");
  alerts.textContent = (d.alerts || []).join(" · ");
  alerts.hidden = !alerts.textContent;
  const warn = $("warnings");
  warn.textContent = (d.warnings || []).join(" · ");
  warn.hidden = !warn.textContent;
  const state = $("state");
  state.textContent = d.up ? "running" : "stopped";
  state.className = d.up ? "ok" : "dim";
  classChart(d);
  fpsChart(d);
  drops(d, dt);
  background(d);
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

// The labelling page of `trainer label` (label.html). Keys: arrows move the focus, 1..9 set
// the class of the focused frame (then the focus moves on), 0 or Backspace clears it,
// n / p the next / previous page, u the next page with an unlabelled frame.
"use strict";
const COLOURS = ["#3c9", "#f93", "#999", "#b8f", "#4cf", "#fd4", "#f6a", "#9e6", "#e66"];
let S = null;             // /api/state
let page = 0, nPages = 1;
let frames = [];          // frames of this page
let focus = 0;
const $ = (id) => document.getElementById(id);
// beyond loopback the server takes labels only with its token: the command prints the
// page's address as ...#token=T; kept for this tab, then dropped from the address bar
const TOKEN = (() => {
  const m = /token=([^&]+)/.exec(location.hash);
  if (m) sessionStorage.setItem("hitstream-label-token", decodeURIComponent(m[1]));
  return sessionStorage.getItem("hitstream-label-token");
})();

function colour(cls) {
  const k = S.classes.indexOf(cls);
  return k >= 0 ? COLOURS[k % COLOURS.length] : "#e66";
}

function say(msg, bad) {
  const e = $("status");
  e.textContent = msg;
  e.className = bad ? "bad" : "";
}

async function api(path, opts) {
  const r = await fetch(path, opts);
  let body = {};
  try { body = await r.json(); } catch (e) { body = {}; }
  if (!r.ok) throw new Error(body.error || (r.status + " " + r.statusText));
  return body;
}

function renderCounts(counts) {
  const box = $("counts");
  box.textContent = "";
  for (const [cls, n] of Object.entries(counts)) {
    const s = document.createElement("span");
    s.dataset.cls = cls;
    s.style.color = colour(cls);
    s.append(cls + " ");
    const b = document.createElement("b");
    b.textContent = n;
    s.append(b);
    box.append(s);
  }
}

// the model's refits while labelling (trainer.labelling.refit): state, button, polling
let refitPoll = null;
function renderRefit(r) {
  const box = $("refitinfo"), btn = $("refitbtn");
  box.textContent = "";
  if (!r || !r.available) {
    btn.hidden = true;
    box.textContent = "model refits: off (" + ((r && r.why) || "none") + ")";
    return;
  }
  btn.hidden = false;
  btn.disabled = r.running;
  const parts = [];
  const h = r.history || [];
  if (h.length) {
    const last = h[h.length - 1];
    const acc = document.createElement("span");
    acc.className = "acc";
    acc.textContent = last.after.toFixed(3);
    box.append("held-out accuracy ", acc,
      " [" + last.after_ci95[0].toFixed(2) + "–" + last.after_ci95[1].toFixed(2) + "] on " +
      last.holdout + " labelled frames after " + last.labels + " labels (base model " +
      last.before.toFixed(3) + "; refits so far: " +
      h.map((e) => e.labels + "→" + e.after.toFixed(2)).join(", ") + ") · ");
  }
  if (r.running) parts.push("refitting (" + r.reason + ", " + r.elapsed_s + " s)…");
  else if (r.next_at !== null) parts.push("next refit at " + r.next_at + " labels");
  else parts.push("refits on the button only");
  box.append(parts.join(" · "));
  if (r.error) {
    const e = document.createElement("span");
    e.className = "bad";
    e.textContent = " · " + r.error;
    box.append(e);
  }
  if (r.running && !refitPoll) refitPoll = setInterval(pollRefit, 2000);
  if (!r.running && refitPoll) { clearInterval(refitPoll); refitPoll = null; }
}

async function newOrder(version) {
  if (version === undefined || version === S.order_version) return;
  S.order_version = version;  // new guesses (and the unlabelled frames ordered anew)
  try { await load(page, "unlabelled"); } catch (e) { say(e.message, true); }
}

function renderInfo() {
  const runs = S.runs.map((r) => r.name + " (" + r.frames + ")").join(", ");
  $("info").textContent = S.n_frames + " frames of " + runs + " · order: " + S.order +
    (S.model ? " · model " + S.model : "") + " · saving to " + S.labels_file;
}

async function pollRefit() {
  try {
    const st = await api("/api/state");
    if (st.model !== S.model) { S.model = st.model; renderInfo(); }
    renderRefit(st.refit);
    await newOrder(st.order_version);
  } catch (e) { say(e.message, true); }
}

async function refitNow() {
  try {
    const r = await api("/api/refit", {
      method: "POST",
      headers: Object.assign({ "Content-Type": "application/json" },
        TOKEN ? { Authorization: "Bearer " + TOKEN } : {}),
      body: "{}",
    });
    renderRefit(r.refit);
  } catch (e) { say("no refit: " + e.message, true); }
}

function scoreText(f) {
  const parts = [];
  if (f.distance === null) parts.push("template");
  else if (f.distance !== undefined) parts.push("d " + f.distance.toFixed(3));
  if (f.uncertainty !== undefined) parts.push("u " + f.uncertainty.toFixed(2));
  return parts.join(" · ");
}

function makeCard(f, k) {
  const c = document.createElement("div");
  c.className = "card";
  c.dataset.id = f.id;
  c.dataset.k = k;
  c.dataset.run = f.run;
  c.dataset.index = f.index;
  const img = document.createElement("img");
  img.src = picture(f);
  img.alt = f.run + " #" + f.index;
  img.title = "#" + (f.position + 1) + " in this order";
  const meta = document.createElement("div");
  meta.className = "meta";
  const where = document.createElement("span");
  where.className = "where";
  where.textContent = f.run + " #" + f.index;
  where.title = where.textContent;
  const score = document.createElement("span");
  score.className = "score";
  score.textContent = scoreText(f);
  meta.append(where, score);
  const info = document.createElement("div");
  info.className = "meta";
  const label = document.createElement("span");
  label.className = "label";
  const guess = document.createElement("span");
  guess.className = "guess";
  if (f.guess !== undefined) guess.textContent = "model: " + f.guess + " " + f.guess_p.toFixed(2);
  info.append(label, guess);
  const btns = document.createElement("div");
  btns.className = "btns";
  S.classes.forEach((cls, i) => {
    const b = document.createElement("button");
    b.dataset.cls = cls;
    b.textContent = (i < 9 ? (i + 1) + " " : "") + cls;
    b.addEventListener("click", (ev) => { ev.stopPropagation(); setFocus(k); setLabel(k, cls); });
    btns.append(b);
  });
  const clear = document.createElement("button");
  clear.dataset.cls = "";
  clear.textContent = "0 clear";
  clear.addEventListener("click", (ev) => {
    ev.stopPropagation(); setFocus(k); setLabel(k, null);
  });
  btns.append(clear);
  c.append(img, meta, info, btns);
  c.addEventListener("click", () => setFocus(k));
  updateCard(c, f);
  return c;
}

function updateCard(c, f) {
  c.dataset.label = f.label || "";
  c.querySelector(".label").textContent = f.label ? f.label : "unlabelled";
  c.querySelector(".label").style.color = f.label ? colour(f.label) : "";
  c.style.borderColor = f.label ? colour(f.label) : "#333";
  for (const b of c.querySelectorAll(".btns button")) {
    const on = b.dataset.cls !== "" && b.dataset.cls === f.label;
    b.classList.toggle("on", on);
    b.style.background = on ? colour(f.label) : "";
  }
}

function picture(f) {
  const full = $("full").checked && S.crop > 0;
  return "/frame/" + S.token + "/" + f.id + (full ? "-full" : "") + ".png";
}

function cards() { return document.querySelectorAll("#grid .card"); }

function setFocus(k) {
  const cs = cards();
  if (!cs.length) return;
  focus = Math.max(0, Math.min(k, cs.length - 1));
  cs.forEach((c, i) => c.classList.toggle("focus", i === focus));
  cs[focus].scrollIntoView({ block: "nearest" });
}

function columns() {
  const cs = cards();
  if (!cs.length) return 1;
  const top = cs[0].offsetTop;
  let n = 0;
  while (n < cs.length && cs[n].offsetTop === top) n++;
  return Math.max(1, n);
}

async function load(p, where) {
  const d = await api("/api/page?page=" + p);
  page = d.page; nPages = d.n_pages; frames = d.frames;
  history.replaceState(null, "", "#page=" + page);
  const grid = $("grid");
  grid.textContent = "";
  frames.forEach((f, k) => grid.append(makeCard(f, k)));
  $("pageinfo").textContent = "page " + (page + 1) + " / " + nPages;
  $("prev").disabled = page === 0;
  $("next").disabled = page >= nPages - 1;
  let k = 0;
  if (where === "last") k = frames.length - 1;
  if (where === "unlabelled") k = Math.max(0, frames.findIndex((f) => !f.label));
  setFocus(k);
  grid.dataset.page = page;
}

async function gotoPage(p, where) {
  if (p < 0 || p >= nPages || p === page) return;
  try { await load(p, where); } catch (e) { say(e.message, true); }
}

async function nextUnlabelled() {
  try {
    for (let p = page + 1; p < nPages; p++) {
      const d = await api("/api/page?page=" + p);
      if (d.frames.some((f) => !f.label)) { await load(p, "unlabelled"); return; }
    }
    say("no unlabelled frames after this page");
  } catch (e) { say(e.message, true); }
}

async function setLabel(k, cls) {
  const f = frames[k];
  if (!f) return;
  const cards0 = cards();
  try {
    const r = await api("/api/label", {
      method: "POST",
      headers: Object.assign({ "Content-Type": "application/json" },
        TOKEN ? { Authorization: "Bearer " + TOKEN } : {}),
      body: JSON.stringify({ id: f.id, class: cls }),
    });
    f.label = r.label;
    if (cards0[k] && cards0[k].isConnected) updateCard(cards0[k], f);
    renderCounts(r.counts);
    say("saved: " + f.run + " #" + f.index + " " + (r.label || "cleared"));
    renderRefit(r.refit);
    await newOrder(r.order_version);
  } catch (e) {
    say("NOT saved: " + e.message, true);
  }
}

function move(delta) {
  const k = focus + delta;
  if (k >= frames.length) { if (page < nPages - 1) gotoPage(page + 1, "first"); return; }
  if (k < 0) { if (page > 0) gotoPage(page - 1, "last"); return; }
  setFocus(k);
}

document.addEventListener("keydown", (ev) => {
  if (ev.ctrlKey || ev.metaKey || ev.altKey || !S) return;
  if (ev.target instanceof HTMLInputElement) return;
  const key = ev.key;
  if (key === "ArrowRight") move(1);
  else if (key === "ArrowLeft") move(-1);
  else if (key === "ArrowDown") move(columns());
  else if (key === "ArrowUp") move(-columns());
  else if (key === "0" || key === "Backspace") setLabel(focus, null);
  else if (key === "n") gotoPage(page + 1, "first");
  else if (key === "p") gotoPage(page - 1, "first");
  else if (key === "u") nextUnlabelled();
  else if (/^[1-9]$/.test(key) && +key <= S.classes.length) {
    const k = focus;
    setLabel(k, S.classes[+key - 1]);
    if ($("advance").checked && k + 1 < frames.length) setFocus(k + 1);
  } else return;
  ev.preventDefault();
});

async function init() {
  try {
    S = await api("/api/state");
  } catch (e) { say("cannot load: " + e.message, true); return; }
  renderCounts(S.counts);
  $("keylist").textContent = S.classes.slice(0, 9).map((c, i) => (i + 1) + " " + c).join(", ");
  renderInfo();
  if (S.novelty && S.novelty.novel) {  // frames unlike the model's training data
    $("novelty").textContent = "The model has not seen frames like these: " +
      S.novelty.reasons.join("; ") + ". " + S.novelty.advice + ".";
    $("novelty").hidden = false;
  }
  $("prev").addEventListener("click", () => gotoPage(page - 1, "first"));
  $("next").addEventListener("click", () => gotoPage(page + 1, "first"));
  $("unl").addEventListener("click", () => nextUnlabelled());
  $("refitbtn").addEventListener("click", () => refitNow());
  renderRefit(S.refit);
  $("full").disabled = S.crop === 0;
  $("full").addEventListener("change", () => {
    cards().forEach((c, k) => { c.querySelector("img").src = picture(frames[k]); });
  });
  const m = /page=(\d+)/.exec(location.hash);
  const p = m ? Math.min(+m[1], S.n_pages - 1) : S.first_unlabelled_page;
  try { await load(p, "unlabelled"); } catch (e) { say(e.message, true); }
  document.body.dataset.ready = "1";
}
init();

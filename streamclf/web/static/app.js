// The streamclf live page: reads /api/status and /api/events once, then follows /api/stream.
// Plain DOM, no libraries: it must work offline on a LAN, served by streamclf itself.
"use strict";

const HISTORY_S = 300;         // seconds of scores a sparkline shows
const FRAME_REFRESH_MS = 500;  // pause between two pictures of a camera, after the last one loaded
const SVG = "http://www.w3.org/2000/svg";
const cards = new Map();       // camera -> {el, shape, labels: Map(areaKey -> Map(label -> row)), history}

function el(tag, cls, text) {
  const e = document.createElement(tag);
  if (cls) e.className = cls;
  if (text !== undefined) e.textContent = text;
  return e;
}

function svg(tag, attrs) {
  const e = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, v);
  return e;
}

function setText(id, text, good) {
  const e = document.getElementById(id);
  e.textContent = text;
  e.className = good === undefined ? "" : (good ? "good" : "bad");
}

function renderHeader(h) {
  setText("health", h.healthy ? "ok" : "unhealthy", h.healthy);
  document.getElementById("health").title = (h.reasons || []).join("; ");
  setText("model", h.model || "?");
  setText("device", h.device || "?");
  setText("precision", h.precision || "?");
  setText("mqtt", h.mqtt_connected ? "connected" : "disconnected", h.mqtt_connected);
  document.getElementById("mqtt").title = h.mqtt_error || "";
  setText("fps", h.frames_per_s.toFixed(1));
}

// Areas a camera is scored in: its zones, or the whole frame ("") when it has none.
function areasOf(cam) {
  return cam.zones.length ? cam.zones.map((z) => z.name) : [""];
}

function shapeOf(cam) {
  return JSON.stringify([areasOf(cam), cam.labels]);
}

function buildCard(cam) {
  const card = el("article", "card");
  card.dataset.camera = cam.name;
  const head = el("div", "head");
  head.append(el("h3", "", cam.name), el("span", "state"));
  const frame = el("div", "frame");
  const img = el("img");
  img.alt = "latest frame of " + cam.name;
  const nopic = el("div", "nopic", "no frame yet");
  const zones = svg("svg", {viewBox: "0 0 1 1", preserveAspectRatio: "none"});
  frame.append(nopic, img, zones);
  const figs = el("div", "figs");
  card.append(head, el("div", "why"), frame, figs);
  const entry = {el: card, shape: shapeOf(cam), rows: new Map(), history: new Map(), img, nopic, zones,
                 hasFrame: cam.frame_size[0] > 0};
  img.hidden = true;
  for (const area of areasOf(cam)) {
    const section = el("div", "area");
    if (area) section.append(el("h4", "", "zone " + area));
    section.dataset.area = area;
    for (const label of cam.labels) {
      const row = el("div", "label" + (label.background ? " background" : ""));
      row.dataset.label = label.name;
      const bar = el("div", "bar");
      const fill = el("div", "fill");
      bar.append(fill);
      if (label.threshold !== null) {
        const thr = el("div", "thr");
        thr.style.left = (label.threshold * 100).toFixed(1) + "%";
        thr.title = "threshold " + label.threshold;
        bar.append(thr);
      }
      const num = el("span", "num", "–");
      const onoff = el("span", "onoff", label.background ? "bg" : "OFF");
      const spark = svg("svg", {class: "spark", viewBox: "0 0 300 1", preserveAspectRatio: "none"});
      const line = svg("polyline", {points: ""});
      spark.append(line);
      if (label.threshold !== null) {
        spark.append(svg("line", {x1: 0, x2: 300, y1: 1 - label.threshold, y2: 1 - label.threshold}));
      }
      row.append(el("span", "name", label.name), bar, num, onoff, spark);
      section.append(row);
      entry.rows.set(area + "\u0000" + label.name, {row, fill, num, onoff, line, label});
    }
    card.append(section);
  }
  const top = el("div", "top");
  top.append("top label: ", el("b", "", "–"));
  card.append(top);
  entry.top = top.querySelector("b");
  return entry;
}

function refreshFrame(name, entry) {
  const img = entry.img;
  img.onload = () => {
    entry.nopic.hidden = true;
    img.hidden = false;
    setTimeout(() => refreshFrame(name, entry), FRAME_REFRESH_MS);
  };
  img.onerror = () => {
    img.hidden = true;
    entry.nopic.hidden = false;
    setTimeout(() => refreshFrame(name, entry), 2000);
  };
  if (cards.get(name) !== entry) return;  // the card was rebuilt: its new image takes over
  if (!entry.hasFrame) {  // nothing to show yet: ask again later rather than collect 404s
    setTimeout(() => refreshFrame(name, entry), 1000);
    return;
  }
  img.src = "/api/cameras/" + encodeURIComponent(name) + "/latest.jpg?t=" + Date.now();
}

function updateCard(cam) {
  let entry = cards.get(cam.name);
  if (!entry || entry.shape !== shapeOf(cam)) {  // new camera, or its labels or zones changed
    const fresh = buildCard(cam);
    if (entry) entry.el.replaceWith(fresh.el); else document.getElementById("cameras").append(fresh.el);
    cards.set(cam.name, fresh);
    entry = fresh;
    entry.hasFrame = cam.frame_size[0] > 0;
    refreshFrame(cam.name, entry);
    for (const [area, h] of Object.entries(cam.history)) {
      entry.history.set(area, h.t.map((t, i) => [t, Object.fromEntries(Object.entries(h.scores).map(([l, s]) => [l, s[i]]))]));
    }
  }
  entry.hasFrame = cam.frame_size[0] > 0;
  const state = entry.el.querySelector(".state");
  state.textContent = cam.state;
  state.className = "state " + cam.state;
  // The last error explains a camera that is not online; once frames flow again it is history.
  const why = [cam.reason, cam.state === "online" ? "" : cam.last_error].filter(Boolean).join(": ");
  entry.el.querySelector(".why").textContent = why + (cam.reconnects ? ` (${cam.reconnects} reconnects)` : "");
  const drops = Object.values(cam.drops).reduce((a, b) => a + b, 0);
  const figs = entry.el.querySelector(".figs");
  figs.replaceChildren();
  for (const [k, v] of [["frames/s", cam.frames_per_s.toFixed(1)], ["classified", cam.frames_classified], ["dropped", drops]]) {
    const span = el("span", "", k + " ");
    span.append(el("b", "", String(v)));
    figs.append(span);
  }
  figs.title = Object.entries(cam.drops).map(([r, n]) => r + ": " + n).join(", ");
  entry.zones.replaceChildren(...cam.zones.map((z) => {
    const [x0, y0, x1, y1] = z.box;
    const g = svg("g");
    g.append(svg("rect", {x: x0, y: y0, width: x1 - x0, height: y1 - y0}));
    return g;
  }));
  if (cam.frame_size[0]) entry.el.querySelector(".frame").style.aspectRatio = cam.frame_size[0] + " / " + cam.frame_size[1];
  entry.top.textContent = cam.top_label || "–";
}

function renderStatus(status) {
  renderHeader(status.header);
  const names = new Set(status.cameras.map((c) => c.name));
  for (const [name, entry] of cards) {
    if (!names.has(name)) { entry.el.remove(); cards.delete(name); }
  }
  for (const cam of status.cameras) updateCard(cam);
}

function renderScores(scores) {
  const now = Date.now() / 1000;
  for (const [camera, areas] of Object.entries(scores)) {
    const entry = cards.get(camera);
    if (!entry) continue;
    for (const [area, a] of Object.entries(areas)) {
      const hist = entry.history.get(area) || [];
      if (a.t !== null && (!hist.length || hist[hist.length - 1][0] < a.t)) hist.push([a.t, a.scores]);
      while (hist.length && hist[0][0] < now - HISTORY_S) hist.shift();
      entry.history.set(area, hist);
      let best = null;
      for (const [label, s] of Object.entries(a.scores)) if (best === null || s > a.scores[best]) best = label;
      if (area === "" && best !== null) entry.top.textContent = best;
      for (const r of entry.rows.values()) {
        if (r.row.parentElement.dataset.area !== area) continue;
        const name = r.label.name;
        const s = a.scores[name];
        if (s !== undefined) {
          r.fill.style.width = (s * 100).toFixed(1) + "%";
          r.num.textContent = s.toFixed(2);
          r.row.dataset.score = String(s);
        }
        if (!r.label.background) {
          const on = !!a.on[name];
          r.onoff.textContent = on ? "ON" : "OFF";
          r.onoff.className = "onoff" + (on ? " on" : "");
        }
        r.line.setAttribute("points", hist.filter((p) => p[1][name] !== undefined)
          .map((p) => `${(300 - (now - p[0])).toFixed(1)},${(1 - p[1][name]).toFixed(3)}`).join(" "));
      }
    }
  }
}

const eventRows = new Map();

function fmtTime(epoch) {
  return new Date(epoch * 1000).toLocaleTimeString();
}

function upsertEvent(ev, atTop) {
  let tr = eventRows.get(ev.id);
  if (!tr) {
    tr = el("tr");
    tr.dataset.eventId = ev.id;
    const body = document.querySelector("#events tbody");
    if (atTop) body.prepend(tr); else body.append(tr);
    eventRows.set(ev.id, tr);
    while (eventRows.size > 100) {
      const last = body.lastElementChild;
      eventRows.delete(last.dataset.eventId);
      last.remove();
    }
  }
  tr.className = ev.active ? "active" : "";
  const snap = el("td");
  if (ev.snapshot) {
    const a = el("a");
    a.href = ev.snapshot;
    a.target = "_blank";
    const img = el("img");
    img.src = ev.snapshot;
    img.alt = ev.label + " on " + ev.camera;
    a.append(img);
    snap.append(a);
  }
  const duration = ev.active ? "ongoing" : ev.duration_s.toFixed(1) + " s";
  tr.replaceChildren(snap, el("td", "", ev.camera), el("td", "", ev.zone || "–"), el("td", "", ev.label),
    el("td", "", fmtTime(ev.start)), el("td", "", duration), el("td", "num", ev.top_score.toFixed(2)));
  document.getElementById("no-events").hidden = eventRows.size > 0;
}

function connect() {
  const source = new EventSource("/api/stream");
  source.addEventListener("open", () => setText("live", "connected", true));
  source.addEventListener("status", (m) => renderStatus(JSON.parse(m.data)));
  source.addEventListener("scores", (m) => renderScores(JSON.parse(m.data)));
  source.addEventListener("event", (m) => upsertEvent(JSON.parse(m.data), true));
  source.addEventListener("error", () => setText("live", "reconnecting", false));
}

async function start() {
  const [status, events] = await Promise.all([
    fetch("/api/status").then((r) => r.json()),
    fetch("/api/events?limit=100").then((r) => r.json()),
  ]);
  renderStatus(status);
  for (const ev of events.events) upsertEvent(ev, false);
  document.getElementById("no-events").hidden = eventRows.size > 0;
  connect();
}

start().catch((e) => setText("live", "cannot load: " + e, false));

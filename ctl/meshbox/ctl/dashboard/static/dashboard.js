// meshbox dashboard: draws /api/graph as inline SVG and /api/workload as line charts. No libraries.
"use strict";

const SVG = "http://www.w3.org/2000/svg";
const REFRESH_MS = 5000;
const NODE_W = 170, NODE_H = 46, COL_GAP = 330, ROW_GAP = 110, MARGIN = 40;
let selected = null;

function el(name, attrs, parent) {
  const node = document.createElementNS(SVG, name);
  for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, v);
  if (parent) parent.appendChild(node);
  return node;
}

function fmt(value, digits) {
  return Number(value).toFixed(digits);
}

function showError(text) {
  const box = document.getElementById("error");
  box.hidden = !text;
  box.textContent = text || "";
}

async function getJSON(url) {
  const reply = await fetch(url);
  const body = await reply.json();
  if (!reply.ok) throw new Error(body.error || reply.statusText);
  return body;
}

// Columns by longest path from the workloads nobody calls; rows by name.
function layout(nodes, edges) {
  const depth = new Map(nodes.map((n) => [n.id, 0]));
  for (let pass = 0; pass < nodes.length; pass++) {
    let changed = false;
    for (const e of edges) {
      if (e.source === e.destination) continue;
      const d = depth.get(e.source) + 1;
      if (d > depth.get(e.destination) && d < nodes.length) { depth.set(e.destination, d); changed = true; }
    }
    if (!changed) break;
  }
  const columns = new Map();
  for (const n of nodes) {
    const d = depth.get(n.id);
    if (!columns.has(d)) columns.set(d, []);
    columns.get(d).push(n.id);
  }
  const pos = new Map();
  for (const [d, ids] of columns) {
    ids.sort().forEach((id, i) => pos.set(id, { x: MARGIN + d * COL_GAP, y: MARGIN + i * ROW_GAP }));
  }
  return pos;
}

function edgeClass(rate) {
  return rate > 0.05 ? "bad" : rate > 0 ? "warn" : "ok";
}

function drawGraph(data) {
  const svg = document.getElementById("graph");
  svg.replaceChildren();
  if (!data.nodes.length) {
    const t = el("text", { x: 20, y: 40, class: "empty" }, svg);
    t.textContent = "No requests in this window: send some traffic through the mesh.";
    return;
  }
  const defs = el("defs", {}, svg);
  const marker = el("marker", { id: "arrow", viewBox: "0 0 10 10", refX: 10, refY: 5, markerWidth: 8,
                                markerHeight: 8, orient: "auto-start-reverse" }, defs);
  el("path", { d: "M 0 0 L 10 5 L 0 10 z", fill: "#5b6b7c" }, marker);
  const pos = layout(data.nodes, data.edges);
  let width = 0, height = 0;
  for (const p of pos.values()) { width = Math.max(width, p.x + NODE_W + MARGIN); height = Math.max(height, p.y + NODE_H + MARGIN); }
  width = Math.max(width, 600); height = Math.max(height, 150);
  svg.setAttribute("viewBox", `0 0 ${width} ${height}`);
  svg.setAttribute("width", width);
  svg.setAttribute("height", height);
  for (const e of data.edges) {
    const a = pos.get(e.source), b = pos.get(e.destination);
    const g = el("g", { class: `edge ${edgeClass(e.error_rate)}`, "data-edge": `${e.source}->${e.destination}` }, svg);
    const x1 = a.x + NODE_W, y1 = a.y + NODE_H / 2, x2 = b.x, y2 = b.y + NODE_H / 2;
    const back = x2 <= x1;
    const d = back
      ? `M ${a.x + NODE_W / 2} ${a.y + NODE_H} C ${a.x + NODE_W / 2} ${a.y + NODE_H + 60}, ${b.x + NODE_W / 2} ${b.y + NODE_H + 60}, ${b.x + NODE_W / 2} ${b.y + NODE_H}`
      : `M ${x1} ${y1} C ${x1 + 60} ${y1}, ${x2 - 60} ${y2}, ${x2} ${y2}`;
    el("path", { d, "marker-end": "url(#arrow)" }, g);
    const mx = back ? (a.x + b.x) / 2 + NODE_W / 2 : (x1 + x2) / 2, my = back ? Math.max(a.y, b.y) + NODE_H + 50 : (y1 + y2) / 2;
    const top = el("text", { x: mx, y: my - 10, class: "edge-rate" }, g);
    top.textContent = `${fmt(e.rps, 2)} rps · ${fmt(e.error_rate * 100, 1)}% 5xx`;
    const bottom = el("text", { x: mx, y: my + 20, class: "edge-latency" }, g);
    bottom.textContent = `p50 ${fmt(e.p50_ms, 1)} ms · p99 ${fmt(e.p99_ms, 1)} ms`;
  }
  for (const n of data.nodes) {
    const p = pos.get(n.id);
    const [ns, name] = n.id.split("/");
    const g = el("g", { class: `node${n.id === selected ? " selected" : ""}`, "data-node": n.id,
                        transform: `translate(${p.x} ${p.y})` }, svg);
    el("rect", { width: NODE_W, height: NODE_H }, g);
    el("text", { x: NODE_W / 2, y: 18 }, g).textContent = name;
    el("text", { x: NODE_W / 2, y: 34, class: "ns" }, g).textContent = ns;
    g.addEventListener("click", () => { selected = n.id; drawGraph(data); loadWorkload(); });
  }
}

function drawChart(parent, title, lines, unit) {
  const box = document.createElement("div");
  box.className = "chart";
  const h = document.createElement("h3");
  h.textContent = title;
  box.appendChild(h);
  const svg = el("svg", { viewBox: "0 0 300 120", preserveAspectRatio: "none" }, box);
  const points = lines.flatMap((l) => l.points.filter((p) => p[1] !== null));
  if (!points.length) {
    el("text", { x: 10, y: 60 }, svg).textContent = "no data";
  } else {
    const t0 = Math.min(...points.map((p) => p[0])), t1 = Math.max(...points.map((p) => p[0]));
    const vmax = Math.max(...points.map((p) => p[1]), 1e-9);
    lines.forEach((line, i) => {
      const coords = line.points.filter((p) => p[1] !== null).map((p) =>
        [5 + 290 * (p[0] - t0) / Math.max(t1 - t0, 1), 110 - 100 * p[1] / vmax]);
      el("polyline", { points: coords.map((c) => `${c[0].toFixed(1)},${c[1].toFixed(1)}`).join(" "), class: `s${i}` }, svg);
      // Dots too: the first minutes of a workload have a point or two, which a line alone would not show.
      for (const c of coords) el("circle", { cx: c[0].toFixed(1), cy: c[1].toFixed(1), r: 1.8, class: `s${i}` }, svg);
    });
    el("text", { x: 4, y: 12 }, svg).textContent = `max ${fmt(vmax, 2)} ${unit}`;
    if (lines.length > 1) el("text", { x: 200, y: 12 }, svg).textContent = lines.map((l) => l.name).join(" / ");
  }
  parent.appendChild(box);
}

async function loadWorkload() {
  if (!selected) return;
  const panel = document.getElementById("workload-panel");
  const windowValue = document.getElementById("window").value;
  const data = await getJSON(`/api/workload?id=${encodeURIComponent(selected)}&window=${windowValue}&minutes=15`);
  panel.hidden = false;
  document.getElementById("workload-title").textContent = `${selected}: golden signals, last 15 minutes`;
  const charts = document.getElementById("charts");
  charts.replaceChildren();
  for (const [direction, s] of Object.entries(data.series)) {
    const label = direction === "inbound" ? "served" : "sent";
    drawChart(charts, `requests/s ${label}`, [{ name: "rps", points: s.rps }], "rps");
    drawChart(charts, `5xx share ${label}`, [{ name: "errors", points: s.error_rate }], "");
    drawChart(charts, `latency ${label}`, [{ name: "p50", points: s.p50_ms }, { name: "p99", points: s.p99_ms }], "ms");
  }
}

async function refresh() {
  const windowValue = document.getElementById("window").value;
  try {
    drawGraph(await getJSON(`/api/graph?window=${windowValue}`));
    await loadWorkload();
    showError("");
    document.getElementById("updated").textContent = `updated ${new Date().toLocaleTimeString()}`;
  } catch (err) {
    showError(`Cannot read the mesh's metrics: ${err.message}`);
  }
}

document.getElementById("window").addEventListener("change", refresh);
refresh();
setInterval(refresh, REFRESH_MS);

// hierfl dashboard: polls api/state once a second and redraws; charts are plain SVG.
// Every text from the run (names, reasons) goes in through textContent, never as HTML.
"use strict";

const POLL_MS = 1000;
const STATES = ["answered", "alive", "waiting", "late", "refused", "not answering", "offline",
  "out", "stopped", "done", "simulated", "unknown"];
const PALETTE = ["#0969da", "#cf222e", "#1a7f37", "#8250df", "#bf8700", "#e16f24", "#1b7c83",
  "#bf3989", "#6e7781", "#4d2d00", "#0550ae", "#a40e26"];
const GLOBAL = "#1f2328";
const TITLES = { loss: "training loss", test_loss: "test loss", round_seconds: "round time (s)",
  macro_f1: "macro F1", auroc: "AUROC", rmse: "RMSE", mae: "MAE" };

let points = [];
let deadlineAt = null;
let lastView = null;
let receivedAt = 0;

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (key === "class") node.className = value;
    else if (key === "text") node.textContent = value;
    else if (key === "style") Object.assign(node.style, value);  // CSSOM: allowed by the CSP
    else node.setAttribute(key, value);
  }
  for (const child of children) if (child != null) node.append(child);
  return node;
}

function svg(tag, attrs) {
  const node = document.createElementNS("http://www.w3.org/2000/svg", tag);
  for (const [key, value] of Object.entries(attrs || {})) node.setAttribute(key, value);
  return node;
}

const stateClass = (state) => "s-" + String(state).replace(/ /g, "-");
const OK = new Set(["answered", "alive", "waiting", "done", "simulated", "unknown"]);

function number(value, digits = 4) {
  if (value == null) return "–";
  if (Math.abs(value) >= 1000) return value.toLocaleString("en", { maximumFractionDigits: 0 });
  return Number(value.toPrecision(digits)).toString();
}

function bytes(value) {
  if (value == null) return "–";
  const units = ["B", "kB", "MB", "GB", "TB"];
  let i = 0;
  while (value >= 1000 && i < units.length - 1) { value /= 1000; i++; }
  return `${Number(value.toPrecision(3))} ${units[i]}`;
}

function seconds(value) {
  if (value == null) return "–";
  const s = Math.max(0, Math.round(value));
  return s >= 60 ? `${Math.floor(s / 60)}:${String(s % 60).padStart(2, "0")}` : `${s} s`;
}

// -- header -----------------------------------------------------------------------------------

function drawHeader(view) {
  const run = view.run;
  document.getElementById("run-name").textContent = run.name || "hierfl run";
  document.title = `${run.name || "hierfl"} · round ${view.round.finished} · hierfl`;
  const meta = [run.task && `task ${run.task}`, run.model, run.algorithm, view.engine,
    run.num_devices && `${run.num_devices} devices`].filter(Boolean).join(" · ");
  document.getElementById("run-meta").textContent = `${meta}  —  ${view.run_dir}`;
  const round = document.getElementById("round");
  round.textContent = `${view.round.current ?? view.round.finished} / ${view.round.total || "?"}`;
  round.dataset.finished = view.round.finished;
  document.getElementById("phase").textContent = view.round.current
    ? `collecting round ${view.round.current}; ${view.round.finished} finished`
    : `${view.round.finished} finished`;
  deadlineAt = view.round.deadline_in == null ? null : Date.now() / 1000 + view.round.deadline_in;
  const pill = document.getElementById("state");
  pill.textContent = view.state;
  const kind = { training: "training", finished: "finished", starting: "starting", stopped: "stopped" };
  pill.className = "pill " + (kind[view.state] || "bad");
  const answered = view.answered.devices || {};
  const expected = view.answered.expected || {};
  const parts = Object.keys(expected).map(
    (p) => `${p} ${Math.min(...(answered[p] && answered[p].length ? answered[p] : [0]))}/${expected[p]}`);
  document.getElementById("answered").textContent = parts.length ? `last round: ${parts.join("  ")}` : "";
  const problems = document.getElementById("problems");
  problems.hidden = view.problems.length === 0;
  problems.replaceChildren(...view.problems.map((p) => el("div", { text: p })));
}

function tick() {
  const deadline = document.getElementById("deadline");
  deadline.textContent = deadlineAt == null ? "–" : seconds(deadlineAt - Date.now() / 1000);
  if (receivedAt) {
    const age = (Date.now() - receivedAt) / 1000;
    document.getElementById("updated").textContent =
      age < 3 ? "live" : `no answer from the dashboard for ${seconds(age)}`;
  }
}

// -- the tree ---------------------------------------------------------------------------------

function nodeRow(name, state, reason, resumed, extra) {
  return el("div", { class: `node ${stateClass(state)}`, "data-state": state, ...extra },
    el("i", { class: "dot" }), el("span", { class: "name", text: name }),
    el("span", { class: "state", text: state }),
    resumed ? el("span", { class: "badge", text: "resumed" }) : null,
    OK.has(state) ? null : el("span", { class: "why", text: reason }));
}

function drawTree(tree) {
  const root = document.getElementById("tree");
  const cloud = el("div", { class: "cloud" },
    nodeRow("cloud", tree.cloud.state, tree.cloud.reason, tree.cloud.resumed, { "data-node": "cloud" }));
  const plants = tree.plants.map((plant) => {
    const lines = plant.lines.map((line) => {
      const devices = line.devices.map((d) => el("span", {
        class: `dev ${stateClass(d.state)}`, title: `${d.name}: ${d.state} — ${d.reason}`,
        "data-device": `${plant.name}/${line.name}/${d.name}`, "data-state": d.state,
      }, el("i", { class: "dot" }), d.name));
      const issues = line.devices.filter((d) => !OK.has(d.state)).map((d) =>
        el("li", {}, el("b", { text: `${d.name} ${d.state}` }), `: ${d.reason}`));
      return el("div", { class: "line" }, el("div", { class: "line-name", text: line.name }),
        el("div", { class: "devices" }, ...devices),
        issues.length ? el("ul", { class: "issues" }, ...issues) : null);
    });
    return el("div", { class: "plant" },
      nodeRow(plant.name, plant.state, plant.reason, plant.resumed, { "data-plant": plant.name }),
      ...lines);
  });
  root.replaceChildren(cloud, ...plants);
}

function drawLegend() {
  document.getElementById("legend").replaceChildren(...STATES.map((s) =>
    el("span", { class: stateClass(s) }, el("i", { class: "dot" }), s)));
}

// -- charts -----------------------------------------------------------------------------------

function chart(title, series, format, id) {
  const W = 320, H = 150, L = 44, R = 8, T = 8, B = 20;
  const all = series.flatMap((s) => s.points).filter((p) => p[1] != null);
  const box = el("div", { class: "chart", "data-chart": id });
  const last = series[0] && series[0].points.length ? series[0].points[series[0].points.length - 1][1] : null;
  box.append(el("h4", {}, el("span", { text: title }), el("span", { class: "now", text: format(last) })));
  const plot = svg("svg", { viewBox: `0 0 ${W} ${H}`, role: "img", "aria-label": title });
  box.append(plot);
  if (all.length === 0) {
    const empty = svg("text", { x: W / 2, y: H / 2, "text-anchor": "middle" });
    empty.textContent = "no rounds yet";
    plot.append(empty);
    return box;
  }
  const xs = all.map((p) => p[0]), ys = all.map((p) => p[1]);
  const x0 = Math.min(...xs), x1 = Math.max(...xs, x0 + 1);
  let y0 = Math.min(...ys), y1 = Math.max(...ys);
  if (y1 - y0 < 1e-12) { y0 -= 0.5 * Math.abs(y0 || 1); y1 += 0.5 * Math.abs(y1 || 1); }
  const px = (x) => L + ((x - x0) / (x1 - x0)) * (W - L - R);
  const py = (y) => T + (1 - (y - y0) / (y1 - y0)) * (H - T - B);
  plot.append(svg("line", { class: "axis", x1: L, y1: H - B, x2: W - R, y2: H - B }));
  plot.append(svg("line", { class: "axis", x1: L, y1: T, x2: L, y2: H - B }));
  const label = (x, y, text, anchor) => {
    const t = svg("text", { x, y, "text-anchor": anchor });
    t.textContent = text;
    plot.append(t);
  };
  label(L - 4, T + 8, format(y1), "end");
  label(L - 4, H - B, format(y0), "end");
  label(L, H - 6, `round ${x0}`, "start");
  label(W - R, H - 6, String(x1), "end");
  for (const s of series.slice().reverse()) {
    const pts = s.points.filter((p) => p[1] != null);
    plot.append(svg("polyline", {
      class: s.global ? "global" : "", stroke: s.color, "data-series": s.name,
      "data-points": pts.length, points: pts.map((p) => `${px(p[0]).toFixed(1)},${py(p[1]).toFixed(1)}`).join(" "),
    }));
  }
  if (series.length > 1) {
    box.append(el("div", { class: "keys" }, ...series.map((s) =>
      el("span", {}, el("i", { style: { background: s.color } }), s.name))));
  }
  return box;
}

function plantColor(plants, name) {
  return PALETTE[plants.indexOf(name) % PALETTE.length];
}

function drawCharts() {
  const names = [...new Set(points.flatMap((p) => Object.keys(p.global)))];
  const plants = [...new Set(points.flatMap((p) => Object.values(p.plants).flatMap(Object.keys)))].sort();
  const metric = lastView ? lastView.run.metric : "accuracy";
  names.sort((a, b) => (b === metric) - (a === metric));
  const charts = names.map((name) => {
    const series = [{ name: "global", global: true, color: GLOBAL,
      points: points.map((p) => [p.round, p.global[name] ?? null]) }];
    for (const plant of plants) {
      if (!points.some((p) => p.plants[name] && plant in p.plants[name])) continue;
      series.push({ name: plant, color: plantColor(plants, plant),
        points: points.map((p) => [p.round, (p.plants[name] || {})[plant] ?? null]) });
    }
    return chart(TITLES[name] || name.replace(/_/g, " "), series, (v) => number(v), name);
  });
  document.getElementById("charts").replaceChildren(...charts);
  const tiers = [...new Set(points.flatMap((p) => Object.keys(p.bytes)))];
  const traffic = tiers.map((tier, i) => ({ name: tier.replace(/_/g, " "), global: i === 0,
    color: PALETTE[i], points: points.map((p) => [p.round, p.bytes[tier]]) }));
  document.getElementById("traffic").replaceChildren(traffic.length
    ? chart("bytes per round", traffic, bytes, "bytes")
    : el("div", { class: "empty", text: "no rounds yet" }));
}

// -- tables -----------------------------------------------------------------------------------

function table(id, headers, rows, empty) {
  const node = document.getElementById(id);
  if (rows.length === 0) {
    node.replaceChildren(el("tr", {}, el("td", { class: "empty", text: empty })));
    return;
  }
  node.replaceChildren(el("tr", {}, ...headers.map((h) => el("th", { text: h }))),
    ...rows.map((row) => el("tr", {}, ...row.map(([text, cls]) => el("td", { class: cls || "", text })))));
}

function drawTables(view) {
  table("rejected", ["node", "reason", "count"],
    view.rejected.map((r) => [[r.node], [r.reason], [String(r.count), "num"]]), "none refused");
  table("refusals", ["time", "node", "sender", "reason", "detail"],
    view.refusals.map((r) => [[new Date(r.at * 1000).toLocaleTimeString()], [r.node], [r.sender],
      [r.reason], [r.detail, "detail"]]), "none");
  const privacy = document.getElementById("privacy");
  const p = view.privacy;
  if (!p) {
    privacy.replaceChildren(el("div", { class: "empty", text: "no differential privacy in this run" }));
  } else {
    const share = p.target ? Math.min(1, (p.epsilon || 0) / p.target) : 0;
    const bar = el("div", { class: share >= 1 ? "over" : share > 0.8 ? "high" : "",
      style: { width: `${(100 * share).toFixed(1)}%` } });
    const eps = points.map((pt) => [pt.round, pt.epsilon]);
    privacy.replaceChildren(
      el("div", { text: `ε spent ${number(p.epsilon)} of ${p.target ? number(p.target) : "no target"}` +
        `  (δ ${p.delta}, DP at the ${p.dp})` }),
      el("div", { class: "budget", "data-epsilon": p.epsilon ?? "" }, bar),
      chart("ε per round", [{ name: "epsilon", global: true, color: PALETTE[3], points: eps }], number, "epsilon"));
  }
  const m = view.models;
  const models = document.getElementById("models");
  const published = m.publish
    ? el("div", {}, el("div", { class: "meta", text: `published to ${m.publish}` }))
    : el("div", { class: "empty", text: "the cloud publishes no models (launch/cloud --publish ADDR)" });
  models.replaceChildren(published, el("table", { id: "published" }), el("h3", { text: "served" }),
    el("table", { id: "servers" }));
  table("published", ["version", view.run.metric],
    m.published.map((v) => [[String(v.version)], [number(v.score)]]), "none published yet");
  table("servers", ["server", "serving", "held", "state"],
    m.servers.map((s) => [[s.name], [String(s.version)], [s.versions.join(", ")], [s.state]]),
    "no server reports (hierfl serve --status RUN_DIR/status)");
}

// -- polling ----------------------------------------------------------------------------------

async function poll() {
  try {
    const response = await fetch(`api/state?since=${points.length}`, { cache: "no-store" });
    if (!response.ok) throw new Error(`${response.status} ${response.statusText}`);
    const state = await response.json();
    receivedAt = Date.now();
    const grew = state.points.length > 0 || state.since !== points.length;
    points = points.slice(0, state.since).concat(state.points);
    lastView = state.view;
    drawHeader(state.view);
    drawTree(state.view.tree);
    if (grew || !document.querySelector("#charts .chart")) drawCharts();
    drawTables(state.view);
  } catch (error) {
    const problems = document.getElementById("problems");
    problems.hidden = false;
    problems.replaceChildren(el("div", { text: `cannot reach the dashboard: ${error.message}; retrying` }));
  } finally {
    setTimeout(poll, POLL_MS);
  }
}

drawLegend();
setInterval(tick, 250);
poll();

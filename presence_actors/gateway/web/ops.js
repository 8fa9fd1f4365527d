// The operator view: polls /api/stats (rates come from differencing its
// counters) and /api/admin/events, and draws the push rate as an inline SVG.
// Both send the admin token when one was entered: without it /api/stats answers
// only what anyone may know (online users visible to all, uptime, node).

import { clockTime, duration, fullTime } from "./timefmt.js";

const POLL_MS = pollInterval();
const WINDOW_MS = 10 * 60_000;
const EVENTS_LIMIT = 30;
const TOKEN_KEY = "presence.adminToken";
const SVG = "http://www.w3.org/2000/svg";
const CHART = { width: 600, height: 160, left: 44, right: 8, top: 10, bottom: 22 };

const $ = (id) => document.getElementById(id);

// ?every=N (seconds, at least 1) polls faster or slower than every 3 s.
function pollInterval() {
  const every = Number(new URLSearchParams(location.search).get("every"));
  return Number.isFinite(every) && every >= 1 ? every * 1000 : 3000;
}

// --- stats and rates ------------------------------------------------------------

let previous = null; // the last sample: {at, pushes, messagesIn}
const rates = []; // {at, pushes, messagesIn} per second, oldest first

const ADMIN_FIGURES = ["stat-connections", "stat-sessions", "stat-known", "stat-pushes", "stat-messages"];

function adminHeaders() {
  const token = sessionStorage.getItem(TOKEN_KEY);
  return token ? { Authorization: `Bearer ${token}` } : {};
}

async function pollStats() {
  const response = await fetch("/api/stats", { cache: "no-store", headers: adminHeaders() });
  if (response.status === 401 || response.status === 403) {
    // A jwt-mode server tells callers without a token nothing; the transitions
    // panel asks for the token.
    for (const id of ["stat-online", "stat-uptime", "stat-node", ...ADMIN_FIGURES]) {
      $(id).textContent = "–";
    }
    withoutAdminFigures();
    return;
  }
  if (!response.ok) throw new Error(`/api/stats answered ${response.status}`);
  const stats = await response.json();
  const at = performance.now();
  $("stat-online").textContent = String(stats.onlineUsers);
  $("stat-uptime").textContent = duration(stats.uptimeSeconds);
  $("stat-node").textContent = stats.node;
  if (stats.connections === undefined) {
    withoutAdminFigures();
    return;
  }
  $("stat-connections").textContent = String(stats.connections);
  $("stat-sessions").textContent = String(stats.sessions);
  $("stat-known").textContent = String(stats.knownUsers);
  const sample = { at, pushes: stats.pushes, messagesIn: stats.messagesIn };
  // Counters that went down mean the server restarted: start the rates afresh.
  if (previous && sample.pushes >= previous.pushes && sample.messagesIn >= previous.messagesIn) {
    const seconds = (at - previous.at) / 1000;
    if (seconds > 0) {
      rates.push({
        at,
        pushes: (sample.pushes - previous.pushes) / seconds,
        messagesIn: (sample.messagesIn - previous.messagesIn) / seconds,
      });
    }
  }
  previous = sample;
  while (rates.length && rates[0].at < at - WINDOW_MS) rates.shift();
  const last = rates[rates.length - 1];
  $("stat-pushes").textContent = last ? rateText(last.pushes) : "–";
  $("stat-messages").textContent = last ? rateText(last.messagesIn) : "–";
  drawChart(at);
}

/** The answer had only the public figures: the rest, and the rates, need the admin token. */
function withoutAdminFigures() {
  for (const id of ADMIN_FIGURES) $(id).textContent = "–";
  previous = null;
  rates.length = 0;
  $("chart").replaceChildren();
  $("chart-legend").textContent = "Connections, sessions and rates need the admin token.";
}

function rateText(value) {
  return value >= 100 ? String(Math.round(value)) : value.toFixed(1);
}

function svg(tag, attributes, text) {
  const node = document.createElementNS(SVG, tag);
  for (const [name, value] of Object.entries(attributes)) node.setAttribute(name, String(value));
  if (text !== undefined) node.textContent = text;
  return node;
}

/** A step-free line of pushes/s over the window, newest at the right. */
function drawChart(now) {
  const chart = $("chart");
  const { width, height, left, right, top, bottom } = CHART;
  const plotWidth = width - left - right;
  const plotHeight = height - top - bottom;
  const peak = Math.max(0, ...rates.map((r) => r.pushes));
  const ceiling = niceCeiling(peak);
  // The time axis grows with the history kept, from one minute up to the window,
  // so a freshly opened page does not squeeze its first samples into a corner.
  const span = Math.min(WINDOW_MS, Math.max(60_000, rates.length ? now - rates[0].at : 0));
  const x = (at) => left + plotWidth * (1 - (now - at) / span);
  const y = (value) => top + plotHeight * (1 - value / ceiling);
  const parts = [
    svg("line", { class: "axis", x1: left, y1: y(0), x2: width - right, y2: y(0) }),
    svg("line", { class: "axis", x1: left, y1: y(ceiling), x2: width - right, y2: y(ceiling) }),
    svg("text", { x: left - 6, y: y(ceiling) + 4, "text-anchor": "end" }, rateText(ceiling)),
    svg("text", { x: left - 6, y: y(0) + 4, "text-anchor": "end" }, "0"),
    svg("text", { x: left, y: height - 6 }, `−${spanText(span)}`),
    svg("text", { x: width - right, y: height - 6, "text-anchor": "end" }, "now"),
  ];
  if (rates.length >= 1) {
    const points = rates.map((r) => `${x(r.at).toFixed(1)},${y(r.pushes).toFixed(1)}`);
    const first = x(rates[0].at).toFixed(1);
    const lastX = x(rates[rates.length - 1].at).toFixed(1);
    parts.push(
      svg("polygon", { class: "area", points: `${first},${y(0)} ${points.join(" ")} ${lastX},${y(0)}` }),
      svg("polyline", { class: "series", points: points.join(" ") }),
    );
  }
  chart.replaceChildren(...parts);
  const last = rates[rates.length - 1];
  $("chart-legend").textContent = last
    ? `Now ${rateText(last.pushes)} pushes/s; peak ${rateText(peak)} over the last ${spanText(span)} (a sample every ${POLL_MS / 1000} s).`
    : "Waiting for a second sample…";
}

function spanText(ms) {
  const minutes = Math.round(ms / 60_000);
  return minutes >= 1 ? `${minutes} min` : `${Math.round(ms / 1000)} s`;
}

/** 1, 2, 5, 10, 20, 50… at or above `value`, so the axis reads well. */
function niceCeiling(value) {
  if (value <= 1) return 1;
  const power = 10 ** Math.floor(Math.log10(value));
  for (const step of [1, 2, 5, 10]) {
    if (value <= step * power) return step * power;
  }
  return 10 * power;
}

// --- transitions ------------------------------------------------------------------

async function pollEvents() {
  const token = sessionStorage.getItem(TOKEN_KEY);
  const response = await fetch(`/api/admin/events?limit=${EVENTS_LIMIT}`, {
    cache: "no-store",
    headers: adminHeaders(),
  });
  if (response.status === 401 || response.status === 403) {
    const body = await response.json().catch(() => ({}));
    const reason = (body.error && body.error.message) || `HTTP ${response.status}`;
    $("events-message").textContent = token
      ? `The admin token was refused (${reason}).`
      : `Transitions need the admin token (${reason}).`;
    $("token-form").hidden = false;
    $("events").hidden = true;
    return;
  }
  if (!response.ok) throw new Error(`/api/admin/events answered ${response.status}`);
  const { events } = await response.json();
  $("token-form").hidden = true;
  $("events").hidden = events.length === 0;
  $("events-message").textContent = events.length ? "" : "No transitions recorded yet.";
  $("events-body").replaceChildren(...events.map(eventRow));
}

function eventRow(event) {
  const row = document.createElement("tr");
  const time = document.createElement("time");
  time.dateTime = event.at;
  time.title = fullTime(event.at);
  time.textContent = clockTime(event.at);
  const cells = [time, event.userId, event.status, event.reason || "", event.deviceId || ""];
  cells.forEach((content, index) => {
    const cell = document.createElement("td");
    if (index === 1) cell.className = "user-cell";
    cell.append(content); // strings become text nodes: never parsed as HTML
    row.append(cell);
  });
  return row;
}

$("token-form").addEventListener("submit", (event) => {
  event.preventDefault();
  sessionStorage.setItem(TOKEN_KEY, $("admin-token").value.trim());
  $("admin-token").value = "";
  Promise.all([pollStats(), pollEvents()]).catch(showFailure);
});

// --- the loop ---------------------------------------------------------------------

function showFailure(error) {
  $("poll-state").dataset.state = "reconnecting";
  $("poll-text").textContent = `Server unreachable, retrying (${error.message})`;
}

async function tick() {
  try {
    await Promise.all([pollStats(), pollEvents()]);
    $("poll-state").dataset.state = "live";
    // A steady word in the live region: a clock here would be announced every poll.
    $("poll-text").textContent = "Live";
    $("poll-state").title = `Updated ${new Date().toLocaleTimeString()}`;
  } catch (error) {
    showFailure(error);
  } finally {
    setTimeout(tick, POLL_MS);
  }
}

tick();

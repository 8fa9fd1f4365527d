// Rendering the user list. Rows are kept per user and updated in place (so a
// push does not rebuild the list or lose the reader's place), and every piece
// of server text goes in through textContent: user names and status messages
// are never parsed as HTML.

import { DEVICE_LABELS, deviceIcon } from "./icons.js";
import { fullTime, lastSeenText } from "./timefmt.js";

export const STATUS_LABELS = { online: "Online", busy: "Busy", away: "Away", offline: "Offline" };

/**
 * The server's list order (get_all_users): online users first, then by lastSeen,
 * most recent first (never seen last), then by userId.
 */
export function compareUsers(a, b) {
  const rank = (u) => (u.status === "offline" ? 1 : 0);
  if (rank(a) !== rank(b)) return rank(a) - rank(b);
  const seen = (u) => (u.lastSeen ? Date.parse(u.lastSeen) : -1);
  if (seen(a) !== seen(b)) return seen(b) - seen(a);
  return a.userId < b.userId ? -1 : a.userId > b.userId ? 1 : 0;
}

export function matches(user, query) {
  if (!query) return true;
  const needle = query.toLowerCase();
  return (
    user.userId.toLowerCase().includes(needle) ||
    (user.username || "").toLowerCase().includes(needle)
  );
}

function element(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined) node.textContent = text;
  return node;
}

function buildRow(userId) {
  const row = element("li", "user");
  row.dataset.userId = userId;
  const dot = element("span", "dot");
  dot.setAttribute("aria-hidden", "true");
  const who = element("div", "who");
  const names = element("p", "names");
  names.append(element("span", "name"), element("span", "uid"), element("span", "you", "(you)"));
  who.append(names, element("p", "message"));
  const meta = element("div", "meta");
  meta.append(element("span", "status-text"), element("span", "devices"), element("time", "seen"));
  row.append(dot, who, meta);
  return row;
}

/** Device icons grouped by type: three web tabs show one globe "×3". */
function fillDevices(container, user) {
  container.replaceChildren();
  if (!user.online) return;
  const counts = new Map();
  for (const device of user.devices || []) {
    if (device.status === "offline") continue; // an invisible session shows nothing
    const type = DEVICE_LABELS[device.deviceType] ? device.deviceType : "other";
    counts.set(type, (counts.get(type) || 0) + 1);
  }
  for (const [type, count] of counts) {
    const label = count > 1 ? `${DEVICE_LABELS[type]} ×${count}` : DEVICE_LABELS[type];
    const badge = element("span", `device device-${type}`);
    badge.title = label;
    badge.dataset.deviceType = type;
    badge.append(deviceIcon(type), element("span", "sr-only", label));
    if (count > 1) {
      const times = element("span", "device-count", `×${count}`);
      times.setAttribute("aria-hidden", "true");
      badge.append(times);
    }
    container.append(badge);
  }
}

function fillRow(row, user, me, nowMs) {
  const name = user.username || user.userId;
  row.dataset.status = user.status;
  row.querySelector(".dot").className = `dot dot-${user.status}`;
  row.querySelector(".name").textContent = name;
  const uid = row.querySelector(".uid");
  uid.textContent = user.username && user.username !== user.userId ? `@${user.userId}` : "";
  uid.hidden = uid.textContent === "";
  row.querySelector(".you").hidden = user.userId !== me;
  row.classList.toggle("is-me", user.userId === me);
  const message = row.querySelector(".message");
  message.textContent = user.statusMessage || "";
  message.hidden = !user.statusMessage;
  row.querySelector(".status-text").textContent = STATUS_LABELS[user.status] || user.status;
  fillDevices(row.querySelector(".devices"), user);
  fillSeen(row.querySelector(".seen"), user, nowMs);
}

function fillSeen(time, user, nowMs) {
  const text = user.online ? null : lastSeenText(user.lastSeen, nowMs);
  time.textContent = text || "";
  time.hidden = !text;
  if (text) {
    time.dateTime = user.lastSeen;
    time.title = fullTime(user.lastSeen);
  }
}

/** Keeps <ul> elements in step with a list of UserViews: online ones, then offline ones. */
export class UserList {
  constructor({ onlineList, offlineList, onlineEmpty, offlineEmpty }) {
    this.onlineList = onlineList;
    this.offlineList = offlineList;
    this.onlineEmpty = onlineEmpty;
    this.offlineEmpty = offlineEmpty;
    this.rows = new Map(); // userId -> <li>
    this.users = [];
  }

  /** Show `users` (already sorted), hiding rows that do not match `query`. */
  render(users, { query = "", me = null, nowMs = Date.now() } = {}) {
    this.users = users;
    const present = new Set();
    const groups = { online: [], offline: [] };
    for (const user of users) {
      present.add(user.userId);
      let row = this.rows.get(user.userId);
      if (!row) {
        row = buildRow(user.userId);
        this.rows.set(user.userId, row);
      }
      fillRow(row, user, me, nowMs);
      row.hidden = !matches(user, query);
      groups[user.online ? "online" : "offline"].push(row);
    }
    for (const [userId, row] of this.rows) {
      if (!present.has(userId)) {
        row.remove();
        this.rows.delete(userId);
      }
    }
    place(this.onlineList, groups.online);
    place(this.offlineList, groups.offline);
    const shown = (rows) => rows.filter((row) => !row.hidden).length;
    this.onlineEmpty.textContent = emptyText(shown(groups.online), query, "Nobody is online right now.");
    this.offlineEmpty.textContent = emptyText(shown(groups.offline), query, "Nobody is offline.");
    this.onlineEmpty.hidden = this.onlineEmpty.textContent === "";
    this.offlineEmpty.hidden = this.offlineEmpty.textContent === "";
  }

  /** Rewrite the "was online … ago" lines only (the 30-second tick). */
  refreshTimes(nowMs) {
    for (const user of this.users) {
      const row = this.rows.get(user.userId);
      if (row) fillSeen(row.querySelector(".seen"), user, nowMs);
    }
  }
}

function emptyText(shown, query, otherwise) {
  if (shown > 0) return "";
  return query ? `No one here matches “${query}”.` : otherwise;
}

/** Put `rows` in `list` in this order, moving only the nodes that are out of place. */
function place(list, rows) {
  rows.forEach((row, index) => {
    if (list.children[index] !== row) list.insertBefore(row, list.children[index] || null);
  });
  while (list.children.length > rows.length) list.lastElementChild.remove();
}

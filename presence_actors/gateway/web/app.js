// The "who is online" page: picks an identity, keeps a live session, and keeps
// the list in step with the server's pushes.

import { PresenceSession } from "./session.js";
import { STATUS_LABELS, UserList, compareUsers } from "./render.js";

const USER_ID = /^[A-Za-z0-9_.:@-]{1,128}$/;
const JWT = /^[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*$/;
const PAGE_SIZE = 1000;
const MAX_USERS = 5000; // beyond this the page is the wrong tool; say so
const REFRESH_DELAY_MS = 250; // pushes in a burst share one get_presence
const ACTIVITY_EVERY_MS = 30_000; // far below presence.away_after (5 min)
const TIMES_EVERY_MS = 30_000;

const $ = (id) => document.getElementById(id);

// --- identity -------------------------------------------------------------------
// ?token=… (jwt mode) or ?userId=… (none mode) signs in; with neither the page
// watches as an observer, and falls back to the sign-in form if that is refused.

const query = new URLSearchParams(location.search);
const identity = query.get("token")
  ? { kind: "token", token: query.get("token") }
  : query.get("userId")
    ? { kind: "user", userId: query.get("userId") }
    : { kind: "observer" };

// One deviceId per tab, kept across reloads and reconnects, so the server's
// grace period hides the gap instead of showing a new device.
function deviceId(renew = false) {
  let id = sessionStorage.getItem("presence.deviceId");
  if (!id || renew) {
    const bytes = crypto.getRandomValues(new Uint8Array(6));
    id = `web-${Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("")}`;
    sessionStorage.setItem("presence.deviceId", id);
  }
  return id;
}

function connectParams() {
  if (identity.kind === "observer") return { observer: "1" };
  const params = { deviceId: deviceId(), deviceType: "web" };
  if (identity.kind === "token") params.token = identity.token;
  else params.userId = identity.userId;
  return params;
}

// --- state ----------------------------------------------------------------------

const users = new Map(); // userId -> UserView (devices may lag a push by a moment)
let me = null; // my userId once welcomed (null as an observer)
let truncated = false;
const changed = new Set(); // users to re-read with get_presence
let refreshTimer = 0;

const session = new PresenceSession(connectParams);
const list = new UserList({
  onlineList: $("online-list"),
  offlineList: $("offline-list"),
  onlineEmpty: $("online-empty"),
  offlineEmpty: $("offline-empty"),
});

// The badge is counted from the very rows just rendered, in the same call, so
// it can never disagree with the list (asking the server for the count after
// each push left it a request behind). Past MAX_USERS, when every row loaded
// is online, there may be more than it shows: "5000+ online".
function render() {
  const sorted = Array.from(users.values()).sort(compareUsers);
  list.render(sorted, { query: $("search").value.trim(), me, nowMs: session.now() });
  $("truncated").hidden = !truncated;
  const online = sorted.filter((user) => user.online).length;
  const more = truncated && online === sorted.length ? "+" : "";
  $("count").textContent = `${online}${more} online`;
}

// --- the connection indicator ----------------------------------------------------

const STATE_TEXT = {
  idle: "Not connected",
  connecting: "Connecting…",
  live: "Live",
  reconnecting: "Reconnecting…",
  waiting: "Reconnecting…",
  refused: "Not connected",
  closed: "Disconnected",
};

function showState(state, text = STATE_TEXT[state]) {
  const indicator = $("connection");
  indicator.dataset.state = state === "waiting" ? "reconnecting" : state;
  $("connection-text").textContent = text;
}

session.addEventListener("state", (event) => {
  const { state } = event.detail;
  if (state !== "refused" && state !== "closed") showState(state);
});

// --- loading and live updates ----------------------------------------------------

async function loadAll() {
  const fresh = new Map();
  let cursor = null;
  do {
    const ask = { type: "get_all_users", limit: PAGE_SIZE };
    if (cursor) ask.cursor = cursor;
    const reply = await session.request(ask);
    for (const user of reply.users) fresh.set(user.userId, user);
    cursor = reply.nextCursor;
  } while (cursor && fresh.size < MAX_USERS);
  truncated = Boolean(cursor);
  users.clear();
  for (const [userId, user] of fresh) users.set(userId, user);
  render();
  reflectMine();
}

// Pushes carry no devices: re-read changed users (batched) for their icons.
//
// The server counts every request except a bare heartbeat as activity, so these
// automatic reads would keep me "online" forever. Two things limit that: a
// hidden tab defers them until it is shown again (the common "away" case), and
// a push about myself (turning away, say) triggers none, which would undo it.
function refreshSoon(userId) {
  changed.add(userId);
  if (!refreshTimer && document.visibilityState !== "hidden") {
    refreshTimer = setTimeout(refreshChanged, REFRESH_DELAY_MS);
  }
}

async function refreshChanged() {
  refreshTimer = 0;
  const ids = Array.from(changed);
  changed.clear();
  try {
    for (let start = 0; start < ids.length; start += PAGE_SIZE) {
      const reply = await session.request({
        type: "get_presence",
        userIds: ids.slice(start, start + PAGE_SIZE),
      });
      for (const user of reply.users) users.set(user.userId, user);
    }
    render();
  } catch (error) {
    // Lost the connection meanwhile: the reload after the next welcome covers it.
    if (error.code !== "NOT_CONNECTED") console.warn("refresh failed", error);
  }
}

session.addEventListener("push", (event) => {
  const push = event.detail;
  const before = users.get(push.userId);
  users.set(push.userId, {
    devices: [],
    ...before,
    userId: push.userId,
    username: push.username,
    status: push.status,
    online: push.online,
    statusMessage: push.statusMessage,
    lastSeen: push.lastSeen,
  });
  render();
  if (push.userId !== me) refreshSoon(push.userId);
});

session.addEventListener("welcome", async (event) => {
  me = event.detail.userId || null;
  $("signin").hidden = true;
  $("guest").hidden = me !== null;
  $("me").hidden = me === null;
  if (me) {
    $("me-name").textContent = me;
    await reapplyStatus();
  }
  try {
    await loadAll();
  } catch (error) {
    if (error.code !== "NOT_CONNECTED") showState("live", `Live (the list failed to load: ${error.message})`);
  }
});

session.addEventListener("refused", (event) => {
  const { code, message } = event.detail;
  showState("refused", "Not connected");
  if (identity.kind === "observer" && code === "FORBIDDEN") {
    showSignIn("Sign in to see who is online.");
  } else if (code === "UNAUTHORIZED") {
    showSignIn(`The server refused the sign-in: ${message}`);
  } else {
    showSignIn(`The server refused the connection: ${message}`);
  }
});

session.addEventListener("closed", (event) => {
  if (event.detail.code === 4001) {
    showState("closed", "Disconnected: the sign-in token expired");
    showSignIn("Your sign-in expired: sign in again with a new token.");
  } else {
    // After our own logout: back to the page without an identity.
    location.assign("/");
  }
});

session.addEventListener("superseded", () => deviceId(true));

// Another session of ours changing our status reaches us as a push, like anyone's;
// our own set_status does not (the reply is enough), so it is applied here.
function applyMine(reply) {
  const mine = users.get(me);
  if (mine) {
    mine.status = reply.effectiveStatus;
    mine.online = reply.effectiveStatus !== "offline";
    mine.statusMessage = reply.statusMessage;
    render();
  }
  refreshSoon(me);
}

// --- my status -------------------------------------------------------------------

const chosenKey = "presence.status";

function reflectMine() {
  if (!me) return;
  const mine = users.get(me);
  const form = $("status-form");
  if (mine && !form.contains(document.activeElement)) {
    $("status-message").value = mine.statusMessage || "";
    $("display-name").value = mine.username || "";
  }
}

function describeStatus(reply) {
  let text = `Your status: ${STATUS_LABELS[reply.status]}`;
  if (reply.effectiveStatus !== reply.status) {
    text += ` (others see ${STATUS_LABELS[reply.effectiveStatus]} because of another device)`;
  }
  $("status-note").textContent = `${text}.`;
}

// A new session starts online; put back what I chose before a reconnect or reload.
async function reapplyStatus() {
  const chosen = sessionStorage.getItem(chosenKey) || "online";
  $("status-select").value = chosen;
  if (chosen === "online") {
    $("status-note").textContent = "Your status: Online.";
    return;
  }
  try {
    const reply = await session.request({ type: "set_status", status: chosen });
    describeStatus(reply);
  } catch (error) {
    $("status-note").textContent = `Could not restore your status: ${error.message}`;
  }
}

$("status-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  const button = $("status-save");
  button.disabled = true;
  try {
    const status = $("status-select").value;
    const reply = await session.request({
      type: "set_status",
      status,
      statusMessage: $("status-message").value.trim(),
      scope: "all", // "I am busy" means on every device
    });
    sessionStorage.setItem(chosenKey, reply.status);
    $("status-select").value = reply.status;
    $("status-message").value = reply.statusMessage || "";
    describeStatus(reply);
    applyMine(reply);
    const name = $("display-name").value.trim();
    const mine = users.get(me);
    if (name && name !== (mine && mine.username)) {
      await session.request({ type: "identify", username: name });
      if (mine) mine.username = name;
      render();
    }
  } catch (error) {
    $("status-note").textContent = `Not saved: ${error.message}`;
  } finally {
    button.disabled = false;
  }
});

$("signout").addEventListener("click", () => {
  sessionStorage.removeItem(chosenKey);
  session.logout();
});

// --- activity: real interaction keeps me from turning "away" -------------------------

let lastActivity = 0;
function interacted() {
  if (!me || session.state !== "live") return;
  const now = Date.now();
  if (now - lastActivity < ACTIVITY_EVERY_MS) return; // leading edge: the first one counts
  lastActivity = now;
  session.send({ type: "activity" });
  // Coming back from away is not pushed to the session that caused it, and
  // `activity` has no reply: ask for my own row again.
  const mine = users.get(me);
  if (mine && mine.status === "away") refreshSoon(me);
}
for (const type of ["pointerdown", "pointermove", "keydown", "wheel", "touchstart"]) {
  document.addEventListener(type, interacted, { capture: true, passive: true });
}
document.addEventListener("visibilitychange", () => {
  if (document.visibilityState !== "visible") return;
  interacted();
  if (changed.size && !refreshTimer) refreshTimer = setTimeout(refreshChanged, REFRESH_DELAY_MS);
});

// --- sign-in form ------------------------------------------------------------------
// A server in jwt mode takes no user id: the form asks for a token there. The
// page learns the mode from the server itself: in jwt mode every /api read
// without a token is 401 (PROTOCOL.md, HTTP), /api/stats included.

let signInKind = null; // a promise of "token" or "user", asked once

function askSignInKind() {
  if (identity.kind === "token") return Promise.resolve("token");
  if (!signInKind) {
    signInKind = fetch("/api/stats", { cache: "no-store" })
      .then((response) => (response.status === 401 ? "token" : "user"))
      .catch(() => "user");
  }
  return signInKind;
}

async function showSignIn(message) {
  const kind = await askSignInKind();
  $("signin").hidden = false;
  $("signin").dataset.kind = kind;
  $("signin-message").textContent = message;
  $("signin-user-field").hidden = kind !== "user";
  $("signin-token-field").hidden = kind !== "token";
  $("guest").hidden = true;
  return kind;
}

$("guest-signin").addEventListener("click", async () => {
  const kind = await showSignIn("Sign in to show yourself online and set your status.");
  $(kind === "token" ? "signin-token" : "signin-user").focus();
});

function refuseInput(field, text) {
  $("signin-error").textContent = text;
  field.setAttribute("aria-invalid", "true");
  field.focus();
}

$("signin").addEventListener("submit", (event) => {
  event.preventDefault();
  if ($("signin").dataset.kind === "token") {
    const field = $("signin-token");
    const token = field.value.trim();
    if (!JWT.test(token)) {
      refuseInput(field, "A token is three parts separated by dots (eyJ….….…)");
      return;
    }
    location.assign(`/?token=${encodeURIComponent(token)}`);
    return;
  }
  const field = $("signin-user");
  const userId = field.value.trim();
  if (!USER_ID.test(userId)) {
    refuseInput(field, "A user id is 1–128 characters: letters, digits and _ . : @ -");
    return;
  }
  location.assign(`/?userId=${encodeURIComponent(userId)}`);
});

// --- search and the clock ------------------------------------------------------------

$("search").addEventListener("input", render);
setInterval(() => list.refreshTimes(session.now()), TIMES_EVERY_MS);

session.connect();

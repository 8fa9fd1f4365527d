// Human wording for moments: "was online 5 minutes ago", uptime, clock times.

const MINUTE = 60_000;
const HOUR = 60 * MINUTE;
const DAY = 24 * HOUR;

function plural(count, unit) {
  return `${count} ${unit}${count === 1 ? "" : "s"}`;
}

/** "just now", "5 minutes ago", "3 hours ago", "2 days ago" (rounded down). */
export function ago(thenMs, nowMs) {
  // A lastSeen slightly ahead of our clock is still "now", not "-1 minutes".
  const elapsed = Math.max(0, nowMs - thenMs);
  if (elapsed < MINUTE) return "just now";
  if (elapsed < HOUR) return `${plural(Math.floor(elapsed / MINUTE), "minute")} ago`;
  if (elapsed < DAY) return `${plural(Math.floor(elapsed / HOUR), "hour")} ago`;
  return `${plural(Math.floor(elapsed / DAY), "day")} ago`;
}

/** The line under an offline user: "was online 5 minutes ago", or null if never seen. */
export function lastSeenText(lastSeen, nowMs) {
  if (!lastSeen) return null;
  const at = Date.parse(lastSeen);
  if (Number.isNaN(at)) return null;
  return `was online ${ago(at, nowMs)}`;
}

/** "3 d 4 h", "2 h 5 min", "4 min 10 s" — for uptime. */
export function duration(seconds) {
  const s = Math.floor(seconds);
  const days = Math.floor(s / 86_400);
  const hours = Math.floor((s % 86_400) / 3600);
  const minutes = Math.floor((s % 3600) / 60);
  if (days > 0) return `${days} d ${hours} h`;
  if (hours > 0) return `${hours} h ${minutes} min`;
  if (minutes > 0) return `${minutes} min ${s % 60} s`;
  return `${s} s`;
}

/** Local wall-clock time with seconds, e.g. "14:03:27". */
export function clockTime(iso) {
  const at = new Date(iso);
  if (Number.isNaN(at.getTime())) return iso;
  return at.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit", second: "2-digit" });
}

/** Local date and time, for tooltips. */
export function fullTime(iso) {
  const at = new Date(iso);
  return Number.isNaN(at.getTime()) ? iso : at.toLocaleString();
}

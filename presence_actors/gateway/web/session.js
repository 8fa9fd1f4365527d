// One WebSocket session with the presence server, kept alive across drops.
//
// The session reconnects with exponential backoff, sends heartbeats at the
// interval the server asks for in `welcome`, and matches replies to requests
// by `requestId`. It knows nothing about the page: it reports what happens as
// events ("state", "welcome", "push", "refused", "closed").

const BACKOFF_FIRST_MS = 500;
const BACKOFF_MOST_MS = 30_000;
const REQUEST_TIMEOUT_MS = 10_000;

// Close codes the server uses (PROTOCOL.md): these end the session for good
// instead of starting a reconnect.
const CLOSE_NORMAL = 1000; // after our own `logout`
const CLOSE_SUPERSEDED = 4000; // another connection took over our deviceId
const CLOSE_TOKEN_EXPIRED = 4001;

export class RequestError extends Error {
  constructor(code, message) {
    super(message);
    this.code = code;
  }
}

export class PresenceSession extends EventTarget {
  /**
   * @param {() => Record<string, string>} params query parameters for /ws,
   *   asked again on every (re)connect so the page can change the deviceId.
   */
  constructor(params) {
    super();
    this.params = params;
    this.state = "idle";
    this.socket = null;
    this.pending = new Map(); // requestId -> {resolve, reject, timer}
    this.nextId = 1;
    this.attempt = 0;
    this.retryTimer = 0;
    this.heartbeatTimer = 0;
    this.welcomed = false;
    this.lastHeard = 0;
    this.heartbeatTimeoutMs = 30_000;
    this.clockOffsetMs = 0; // server clock minus ours, from message timestamps
    this.stopped = false;
    this.leaving = false; // a logout was sent: nothing more goes out
    // Coming back online should not wait out a long backoff.
    window.addEventListener("online", () => this.retryNow());
  }

  connect() {
    this.stopped = false;
    this.leaving = false;
    clearTimeout(this.retryTimer);
    this.setState(this.attempt === 0 ? "connecting" : "reconnecting");
    const url = new URL("/ws", location.href);
    url.protocol = location.protocol === "https:" ? "wss:" : "ws:";
    for (const [key, value] of Object.entries(this.params())) {
      url.searchParams.set(key, value);
    }
    const socket = new WebSocket(url);
    this.socket = socket;
    this.welcomed = false;
    let refusal = null; // an error that came before `welcome`: the server said no
    socket.addEventListener("message", (event) => {
      if (socket !== this.socket) return;
      let message;
      try {
        message = JSON.parse(event.data);
      } catch {
        return;
      }
      this.lastHeard = Date.now();
      if (typeof message.timestamp === "string") {
        const at = Date.parse(message.timestamp);
        if (!Number.isNaN(at)) this.clockOffsetMs = at - Date.now();
      }
      if (!this.welcomed && message.type === "error") {
        refusal = message;
        return;
      }
      this.handle(message);
    });
    socket.addEventListener("close", (event) => {
      if (socket !== this.socket) return;
      this.dropped(event.code, event.reason, refusal);
    });
  }

  /** The server's idea of now, in ms since the epoch. */
  now() {
    return Date.now() + this.clockOffsetMs;
  }

  handle(message) {
    if (message.type === "welcome") {
      this.welcomed = true;
      this.attempt = 0;
      this.startHeartbeat(message.heartbeatInterval, message.heartbeatTimeout);
      this.setState("live");
      this.emit("welcome", message);
      return;
    }
    const waiting = message.requestId && this.pending.get(message.requestId);
    if (waiting) {
      this.pending.delete(message.requestId);
      clearTimeout(waiting.timer);
      if (message.type === "error") {
        waiting.reject(new RequestError(message.code, message.message));
      } else {
        waiting.resolve(message);
      }
      return;
    }
    if (message.type === "user_status_change") {
      this.emit("push", message);
    } else if (message.type === "error") {
      this.emit("server-error", message);
    }
  }

  /** Send a request and wait for its reply (rejects on `error` or timeout). */
  request(message) {
    if (!this.writable()) {
      return Promise.reject(new RequestError("NOT_CONNECTED", "not connected"));
    }
    const requestId = `r${this.nextId++}`;
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        this.pending.delete(requestId);
        reject(new RequestError("TIMEOUT", `no reply to ${message.type}`));
      }, REQUEST_TIMEOUT_MS);
      this.pending.set(requestId, { resolve, reject, timer });
      this.socket.send(JSON.stringify({ ...message, requestId }));
    });
  }

  /** Send a message that has no reply (activity), if connected. */
  send(message) {
    if (this.writable()) this.socket.send(JSON.stringify(message));
  }

  /**
   * Whether a message may go out now: live, not logging out, and the socket
   * itself open (it is already closing for a while before `close` fires).
   */
  writable() {
    return (
      this.state === "live" &&
      !this.leaving &&
      this.socket !== null &&
      this.socket.readyState === WebSocket.OPEN
    );
  }

  /** Log out: the server ends the session at once (no grace period). */
  logout() {
    if (this.writable()) {
      this.send({ type: "logout" });
      this.leaving = true; // nothing more goes out; the server closes the socket
      this.stopHeartbeat();
    } else {
      this.stop();
    }
  }

  stop() {
    this.stopped = true;
    clearTimeout(this.retryTimer);
    this.stopHeartbeat();
    if (this.socket) this.socket.close(CLOSE_NORMAL);
    this.socket = null;
    this.setState("closed");
  }

  retryNow() {
    if (this.state === "waiting") this.connect();
  }

  startHeartbeat(intervalSeconds, timeoutSeconds) {
    this.stopHeartbeat();
    // Floors only guard against a zero or missing value turning into a busy loop.
    const interval = Math.max(0.1, Number(intervalSeconds) || 15) * 1000;
    this.heartbeatTimeoutMs = Math.max(0.5, Number(timeoutSeconds) || 30) * 1000;
    this.heartbeatTimer = setInterval(() => {
      // A connection that went quiet (a laptop lid, a dead Wi-Fi) may never
      // fire `close`; when even our heartbeats get no ack, give up on it.
      if (Date.now() - this.lastHeard > this.heartbeatTimeoutMs) {
        const socket = this.socket;
        this.socket = null;
        socket.close();
        this.dropped(4002, "no reply from the server", null);
        return;
      }
      this.send({ type: "heartbeat" }); // bare: it keeps us alive, not "active"
    }, interval);
  }

  stopHeartbeat() {
    clearInterval(this.heartbeatTimer);
  }

  dropped(code, reason, refusal) {
    this.stopHeartbeat();
    this.socket = null;
    for (const { reject, timer } of this.pending.values()) {
      clearTimeout(timer);
      reject(new RequestError("NOT_CONNECTED", "connection lost"));
    }
    this.pending.clear();
    if (this.stopped) return;
    if (refusal) {
      // Refused before welcome (bad user id, bad token, observers disabled):
      // retrying the same parameters would only be refused again.
      this.setState("refused");
      this.emit("refused", refusal);
      return;
    }
    if (code === CLOSE_NORMAL || code === CLOSE_TOKEN_EXPIRED) {
      this.setState("closed");
      this.emit("closed", { code, reason });
      return;
    }
    if (code === CLOSE_SUPERSEDED) {
      // Our deviceId connected again elsewhere (a duplicated tab shares its
      // sessionStorage): let the page pick a new one, then come back at once.
      this.emit("superseded", { code, reason });
      this.attempt = 1;
      this.connect();
      return;
    }
    // Full jitter, so that a restarted server is not hit by every page at once.
    const ceiling = Math.min(BACKOFF_MOST_MS, BACKOFF_FIRST_MS * 2 ** this.attempt);
    const delay = ceiling / 2 + Math.random() * (ceiling / 2);
    this.attempt += 1;
    this.setState("waiting", { delay, code, reason });
    this.retryTimer = setTimeout(() => this.connect(), delay);
  }

  setState(state, detail = {}) {
    this.state = state;
    this.emit("state", { state, ...detail });
  }

  emit(type, detail) {
    this.dispatchEvent(new CustomEvent(type, { detail }));
  }
}

/*
 * Realtime browser client: one object per channel subscription, over WebSocket (WS channels) or
 * Server-Sent Events (SSE channels). It reconnects by itself with exponential backoff and jitter
 * and resumes from the last message received, so nothing is missed across a disconnect; when the
 * server's history cannot cover the gap it says so with a "gap" event.
 *
 *   const sub = Realtime.connect({ channel: "my-chat-example", transport: "ws", clientId: "alice" });
 *   sub.on("message", (message) => console.log(message.clientId, message.payload));
 *   sub.send("hello");
 *
 * Plain script, no build step: load it with <script src=".../realtime.js"> and use the global
 * `Realtime`. Several channels on one connection: realtime-multiplex.js, loaded after this file,
 * adds `Realtime.multiplex`. Documented in docs/javascript-client.md.
 */
(function (global) {
  "use strict";

  // Close codes (WS) and HTTP statuses (SSE refusals) mean the same things; SSE statuses are
  // reported as the matching close code so that callers handle one set of numbers.
  const STATUS_TO_CODE = { 400: 4400, 401: 4401, 403: 4403, 404: 4404, 409: 4409, 410: 4410, 413: 1009, 422: 4422, 429: 4429, 503: 4503 };

  const DESCRIPTIONS = {
    1001: "The server is restarting or shutting down.",
    1003: "The server accepts text messages only.",
    1009: "The message was too large for the server.",
    4001: "Another connection with this name (clientId) joined the channel and replaced this one, probably from another tab or device.",
    4400: "The server refused the request as malformed.",
    4401: "This channel is private: joining it needs a valid token.",
    4403: "This connection is not allowed: the channel is private or this site's origin is not accepted by the server.",
    4404: "There is no channel with this id or name.",
    4408: "The connection could not keep up with the channel and was cut off.",
    4409: "This name (clientId) is already connected to the channel, probably from another tab or device.",
    4410: "This channel was deleted.",
    4422: "The channel is full: it already has its maximum number of connections.",
    4429: "Messages were sent too fast; the last one was not delivered.",
    1012: "The server is restarting.",
    4503: "The server is shutting down or briefly unavailable.",
  };

  // Refusals that a retry cannot fix. 4409 is among them only before the first successful
  // connection: after a server restart the old connection's slot may linger for a moment. 4001
  // (replaced by a newer connection with this clientId): reconnecting would replace that one.
  const PERMANENT = new Set([1003, 4001, 4400, 4401, 4403, 4404, 4410]);
  const MAX_SEEN_IDS = 2000;

  /** A sentence explaining a close code or refusal, for people. */
  function describe(code, error) {
    if (error === "origin_not_allowed") return "This site's origin is not allowed to connect to the channel (server.allowed_origins).";
    if (error === "wrong_transport") return "This channel uses the other transport (WebSocket vs. Server-Sent Events).";
    return DESCRIPTIONS[code] || (code ? `The connection closed (code ${code}).` : "The connection failed.");
  }

  /** The resume position "<epoch>-<offset>" of a delivered message, or null. */
  function positionOf(message) {
    if (message && message.offset !== undefined && message.offset !== null && message.epoch) {
      return `${message.epoch}-${message.offset}`;
    }
    return null;
  }

  class Subscription {
    constructor(options) {
      if (!options || !options.channel) throw new TypeError("Realtime.connect needs { channel: <id or name> }");
      const transport = (options.transport || "ws").toLowerCase();
      if (transport !== "ws" && transport !== "sse") throw new TypeError('transport must be "ws" or "sse"');
      this.channel = String(options.channel);
      this.transport = transport;
      this.clientId = options.clientId || null;
      this.echo = Boolean(options.echo);
      this.token = options.token || null;
      // "json": payloads published as JSON values arrive as values, and send() publishes JSON values.
      this.payload = options.payload ?? null;
      if (this.payload !== null && this.payload !== "text" && this.payload !== "json") throw new TypeError('payload must be "text" or "json"');
      this.baseUrl = options.baseUrl || "/api/v1/channels/";
      this.minDelay = options.minDelay ?? 500;
      this.maxDelay = options.maxDelay ?? 15000;
      this.stableAfter = options.stableAfter ?? 2000;
      // The position to resume after: given, "0" for the whole history, or none (live only).
      this.position = options.since ?? (options.history ? "0" : null);
      this.state = "idle";
      this._history = Boolean(options.history);
      this._handlers = new Map();
      this._seen = new Set();
      this._socket = null;
      this._attempt = 0;
      this._timer = null;
      this._stableTimer = null;
      this._everConnected = false;
      this._stopped = false;
      this._onOnline = () => {
        if (this._timer !== null) this.reconnectNow();
      };
      if (global.addEventListener) global.addEventListener("online", this._onOnline);
      // Connect once the caller has attached its listeners, so that they see every event.
      queueMicrotask(() => this._open());
    }

    /** Listen to "message", "status", "error", "gap", or on a presence channel "join" and "leave"
     * ({clientId, info}); returns a function that stops listening. */
    on(type, handler) {
      if (!this._handlers.has(type)) this._handlers.set(type, new Set());
      this._handlers.get(type).add(handler);
      return () => this.off(type, handler);
    }

    off(type, handler) {
      const handlers = this._handlers.get(type);
      if (handlers) handlers.delete(handler);
    }

    /** Publish a message on a WS channel: text, or with payload "json" any JSON value; false when not connected (nothing is queued). */
    send(text) {
      if (this.transport !== "ws") {
        throw new Error("send() works on WS channels; publish to SSE channels with POST /api/v1/channels/<id>/messages");
      }
      const socket = this._socket;
      if (!socket || socket.readyState !== WebSocket.OPEN) return false;
      socket.send(this.payload === "json" ? JSON.stringify(text) : String(text));
      return true;
    }

    /** Stop for good: close the connection and cancel any pending reconnect. */
    close() {
      if (!this._stopped) this._stop({ reason: "closed by the page" });
    }

    /** Reconnect at once instead of waiting for the backoff timer. */
    reconnectNow() {
      if (this._stopped) return;
      this._clearTimers();
      this._dropSocket();
      this._open();
    }

    // --- internals -------------------------------------------------------------------------

    _emit(type, detail) {
      const handlers = this._handlers.get(type);
      if (!handlers) return;
      for (const handler of [...handlers]) {
        try {
          handler(detail);
        } catch (exc) {
          // A failing listener must not break delivery to the others, nor the connection.
          setTimeout(() => {
            throw exc;
          });
        }
      }
    }

    _setState(state, extra) {
      this.state = state;
      this._emit("status", { state, attempt: this._attempt, ...extra });
    }

    _url() {
      const url = new URL(this.baseUrl + encodeURIComponent(this.channel), global.location.href);
      if (this.transport === "ws") url.protocol = url.protocol === "https:" ? "wss:" : "ws:";
      if (this.clientId) url.searchParams.set("clientId", this.clientId);
      if (this.echo) url.searchParams.set("echo", "1");
      if (this.token) url.searchParams.set("token", this.token);
      if (this.payload) url.searchParams.set("payload", this.payload);
      if (this.position !== null) url.searchParams.set(this.transport === "ws" ? "since" : "lastEventId", this.position);
      return url.toString();
    }

    _open() {
      if (this._stopped) return;
      this._setState(this._attempt === 0 && !this._everConnected ? "connecting" : "reconnecting", { delay: 0 });
      if (this.transport === "ws") this._openWebSocket();
      else this._openEventSource();
    }

    _connected() {
      this._setState("open");
      clearTimeout(this._stableTimer);
      // A refused WebSocket opens, then closes at once: count the connection as good only when
      // it lasts, so that repeated refusals keep backing off.
      this._stableTimer = setTimeout(() => this._markStable(), this.stableAfter);
    }

    _markStable() {
      this._attempt = 0;
      this._everConnected = true;
    }

    _deliver(message, position) {
      if (!message || typeof message !== "object") return;
      if (position) this.position = position;
      if (message.id) {
        if (this._seen.has(message.id)) return;
        this._seen.add(message.id);
        if (this._seen.size > MAX_SEEN_IDS) this._seen.delete(this._seen.values().next().value);
      }
      this._markStable();
      this._emit("message", message);
    }

    _gap(body) {
      // Asking for the whole history ("0") on the first connection promises nothing: trimmed
      // history there is not a loss for this page.
      if (!this._everConnected && this._history && body.requested === "0") return;
      this._emit("gap", body);
    }

    _refused({ code, error, message, status }) {
      const permanent = PERMANENT.has(code) || (code === 4409 && !this._everConnected);
      this._emit("error", { code, error: error || null, message: message || describe(code, error), description: describe(code, error), status, permanent });
      return permanent;
    }

    _scheduleReconnect(extra) {
      if (this._stopped) return;
      clearTimeout(this._stableTimer);
      const ceiling = Math.min(this.maxDelay, this.minDelay * 2 ** this._attempt);
      // "Equal jitter": at least half the backoff, so clients that lost the same server do not
      // all come back in the same instant, yet none retries immediately.
      const delay = Math.round(ceiling / 2 + Math.random() * (ceiling / 2));
      this._attempt += 1;
      this._setState("reconnecting", { delay, ...extra });
      this._timer = setTimeout(() => {
        this._timer = null;
        this._open();
      }, delay);
    }

    _stop(extra) {
      this._stopped = true;
      this._clearTimers();
      if (global.removeEventListener) global.removeEventListener("online", this._onOnline);
      this._dropSocket();
      this._setState("closed", extra);
    }

    _clearTimers() {
      clearTimeout(this._timer);
      clearTimeout(this._stableTimer);
      this._timer = null;
    }

    _dropSocket() {
      const socket = this._socket;
      this._socket = null;
      if (!socket) return;
      if (socket instanceof global.WebSocket) {
        socket.onopen = socket.onmessage = socket.onclose = socket.onerror = null;
        if (socket.readyState === WebSocket.CONNECTING || socket.readyState === WebSocket.OPEN) socket.close(1000);
      } else {
        socket.close();
      }
    }

    _openWebSocket() {
      let socket;
      try {
        socket = new WebSocket(this._url());
      } catch (exc) {
        this._refused({ code: 4400, message: String(exc.message || exc) });
        this._stop({ reason: "invalid URL", refused: true });
        return;
      }
      this._socket = socket;
      let closing = null;
      socket.onopen = () => this._connected();
      socket.onmessage = (event) => {
        let data;
        try {
          data = JSON.parse(event.data);
        } catch {
          this._emit("error", { code: null, error: "bad_frame", message: "The server sent a frame that is not JSON.", permanent: false });
          return;
        }
        if (data && typeof data.control === "string") {
          if (data.control === "gap") this._gap(data);
          else if (data.control === "join" || data.control === "leave") this._emit(data.control, { clientId: data.clientId, info: data.info ?? null });
          else if (data.control === "close") closing = data;
          else this._emit("error", { code: data.code ?? null, error: data.error || null, message: data.message || describe(data.code), description: describe(data.code, data.error), permanent: false });
          return;
        }
        this._deliver(data, positionOf(data));
      };
      socket.onclose = (event) => {
        if (this._socket !== socket) return;
        this._socket = null;
        clearTimeout(this._stableTimer);
        const code = closing ? closing.code : event.code;
        const explained = closing || code >= 4000 || code === 1003 || code === 1009;
        if (explained && this._refused({ code, error: closing && closing.error, message: closing && closing.message })) {
          this._stop({ code, reason: describe(code, closing && closing.error), refused: true });
          return;
        }
        this._scheduleReconnect({ code });
      };
    }

    _openEventSource() {
      const source = new EventSource(this._url());
      this._socket = source;
      let opened = false;
      let browserRetrying = false;
      source.onopen = () => {
        opened = true;
        browserRetrying = false;
        this._connected();
      };
      source.addEventListener("message", (event) => {
        let data;
        try {
          data = JSON.parse(event.data);
        } catch {
          return;
        }
        this._deliver(data, positionOf(data) || event.lastEventId || null);
      });
      source.addEventListener("gap", (event) => this._gap(JSON.parse(event.data)));
      for (const control of ["join", "leave"]) {
        source.addEventListener(control, (event) => {
          const body = JSON.parse(event.data);
          this._emit(control, { clientId: body.clientId, info: body.info ?? null });
        });
      }
      source.addEventListener("stream-error", (event) => {
        const body = JSON.parse(event.data);
        if (body.control === "close" && this._refused(body)) this._stop({ code: body.code, reason: describe(body.code, body.error), refused: true });
        else if (body.control !== "close") this._emit("error", { ...body, permanent: false, description: describe(body.code, body.error) });
      });
      source.onerror = () => {
        if (this._socket !== source) return;
        if (opened && !browserRetrying && source.readyState === EventSource.CONNECTING) {
          // The browser reconnects by itself once, resending Last-Event-ID; if that fails too,
          // this client takes over with its own backoff.
          browserRetrying = true;
          clearTimeout(this._stableTimer);
          this._setState("reconnecting", { delay: null });
          return;
        }
        this._socket = null;
        source.close();
        clearTimeout(this._stableTimer);
        if (opened || browserRetrying) {
          this._scheduleReconnect({});
          return;
        }
        // EventSource hides why a stream was refused; the preflight (?upgrade=0) says it in JSON,
        // readable even by a page whose origin is refused (403 origin_not_allowed).
        this._explainRefusal().then((refusal) => {
          if (this._stopped || this._socket !== null || this._timer !== null) return;
          if (refusal && this._refused(refusal)) {
            this._stop({ code: refusal.code, reason: describe(refusal.code, refusal.error), refused: true });
            return;
          }
          this._scheduleReconnect(refusal ? { code: refusal.code } : {});
        });
      };
    }

    async _explainRefusal() {
      const url = new URL(this._url());
      url.searchParams.delete("lastEventId");
      url.searchParams.set("upgrade", "0");
      let response;
      try {
        response = await fetch(url, { credentials: "omit", cache: "no-store" });
      } catch {
        return null; // The server is unreachable: an outage, not a refusal.
      }
      let body = {};
      try {
        body = await response.json();
      } catch {
        // Not the service's JSON (a proxy's error page): the status says enough.
      }
      if (response.ok) {
        // The preflight admits what a subscription would, except for these two refusals.
        if (body.type && body.type.toLowerCase() !== this.transport) {
          return { code: 4400, error: "wrong_transport", message: `Channel ${JSON.stringify(body.id)} is a ${body.type} channel.` };
        }
        if (body.private && !this.token) return { code: 4401, error: "token_required", message: null };
        return null;
      }
      return { code: STATUS_TO_CODE[response.status] || response.status, error: body.error, message: body.message, status: response.status };
    }
  }

  global.Realtime = {
    /** Subscribe to a channel; see docs/javascript-client.md for every option. */
    connect(options) {
      return new Subscription(options);
    },
    Subscription,
    describe,
    positionOf,
    /** The close code matching an HTTP refusal's status (404 becomes 4404), as the subscription reports it. */
    codeOfStatus(status) {
      return STATUS_TO_CODE[status] || status;
    },
    PERMANENT,
  };
})(typeof window !== "undefined" ? window : globalThis);

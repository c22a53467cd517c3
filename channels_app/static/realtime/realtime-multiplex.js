/*
 * Several channels on ONE connection (docs/protocol.md, "Many channels on one connection"):
 * a WebSocket to /api/v1/connect that subscribes and unsubscribes with control frames, or one
 * event stream /api/v1/events?channel=a&channel=b whose ids hold every channel's position.
 *
 *   const mux = Realtime.multiplex({ transport: "sse" });
 *   const news = mux.subscribe("news", (message) => show(message), { since: savedPosition });
 *   mux.unsubscribe("news");
 *
 * It reconnects with backoff and resumes every channel from its own last position, reports gaps
 * per channel, and against a server without these endpoints (an older release, the Go service)
 * falls back to one connection per channel through Realtime.connect. Load it after realtime.js.
 * Documented in docs/javascript-client.md.
 */
(function (global) {
  "use strict";

  const Realtime = global.Realtime;
  if (!Realtime || !Realtime.Subscription) throw new Error("Load realtime.js before realtime-multiplex.js.");
  const { describe, positionOf, codeOfStatus, PERMANENT } = Realtime;
  const MAX_SEEN_IDS = 2000;
  // Statuses with which a server that has no multiplexed endpoint answers them (a refusal of the
  // endpoint names its channel, or has a status of its own).
  const ENDPOINT_MISSING = new Set([404, 405, 501]);

  class Emitter {
    constructor() {
      this._handlers = new Map();
    }

    /** Listen to an event; returns a function that stops listening. */
    on(type, handler) {
      if (!this._handlers.has(type)) this._handlers.set(type, new Set());
      this._handlers.get(type).add(handler);
      return () => this.off(type, handler);
    }

    off(type, handler) {
      this._handlers.get(type)?.delete(handler);
    }

    _emit(type, detail) {
      for (const handler of [...(this._handlers.get(type) || [])]) {
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
  }

  function refusal(body, status) {
    const code = body.code ?? (status ? codeOfStatus(status) : null);
    return { code, error: body.error || null, message: body.message || describe(code, body.error), description: describe(code, body.error), status: status ?? null };
  }

  /** One channel followed on a multiplexed connection: "message", "gap", "error", "subscribed", "join", "leave". */
  class ChannelSubscription extends Emitter {
    constructor(multiplex, reference, options) {
      super();
      this.multiplex = multiplex;
      this.channel = reference;
      this.id = null;
      this.name = null;
      this.token = options.token || null;
      // As Realtime.connect: a position given, "0" for the whole history, or none (live only).
      this.position = options.since ?? (options.history ? "0" : null);
      this.state = "pending";
      this._history = Boolean(options.history);
      this._everSubscribed = false;
      this._seen = new Set();
      this._attempt = 0;
      this._retry = null;
    }

    /** Stop following this channel (the connection stays, for the others). */
    unsubscribe() {
      return this.multiplex.unsubscribe(this.channel);
    }

    /** Publish on this channel (WebSocket, WS channels only); see Multiplex.publish. */
    publish(payload) {
      return this.multiplex.publish(this.channel, payload);
    }

    _matches(reference) {
      return reference === this.channel || (reference !== null && (reference === this.id || reference === this.name));
    }

    _subscribed(body) {
      this.id = body.channelId || body.channel || this.id;
      this.name = body.name || this.name;
      if (body.position) this.position = body.position;
      this.state = "subscribed";
      this._attempt = 0;
      this._everSubscribed = true;
      this._emit("subscribed", { channel: this.channel, id: this.id, name: this.name, position: this.position });
    }

    _deliver(message) {
      if (!message || typeof message !== "object" || this.state === "closed") return;
      // A one-channel fallback tells the channel's id only with its messages.
      if (this.id === null && message.channelId) this.id = message.channelId;
      const position = positionOf(message);
      if (position) this.position = position;
      if (message.id) {
        if (this._seen.has(message.id)) return;
        this._seen.add(message.id);
        if (this._seen.size > MAX_SEEN_IDS) this._seen.delete(this._seen.values().next().value);
      }
      this._emit("message", message);
    }

    _gap(body) {
      // The whole history asked ("0") promises nothing: history trimmed there is not a loss for this page.
      if (this._history && body.requested === "0") return;
      this._emit("gap", { ...body, channel: this.channel });
    }

    _fail(detail) {
      const permanent = detail.permanent;
      this._emit("error", { ...detail, channel: this.channel });
      if (permanent) this.state = "closed";
      return permanent;
    }
  }

  class Multiplex extends Emitter {
    constructor(options = {}) {
      super();
      const transport = (options.transport || "ws").toLowerCase();
      if (transport !== "ws" && transport !== "sse") throw new TypeError('transport must be "ws" or "sse"');
      this.transport = transport;
      this.clientId = options.clientId || null;
      this.echo = Boolean(options.echo);
      this.payload = options.payload ?? null;
      if (this.payload !== null && this.payload !== "text" && this.payload !== "json") throw new TypeError('payload must be "text" or "json"');
      this.baseUrl = options.baseUrl || "/api/v1/";
      if (!this.baseUrl.endsWith("/")) this.baseUrl += "/";
      this.minDelay = options.minDelay ?? 500;
      this.maxDelay = options.maxDelay ?? 15000;
      this.stableAfter = options.stableAfter ?? 2000;
      // null until the server shows what it serves; "multiplexed", or "channels" after a fallback.
      this.mode = null;
      this.state = "idle";
      this._channels = new Map();
      this._socket = null;
      this._ready = false;
      this._attempt = 0;
      this._timer = null;
      this._stableTimer = null;
      this._restreamQueued = false;
      this._stopped = false;
      this._refs = new Map();
      this._nextRef = 1;
      this._fallbacks = new Map();
      this._onOnline = () => {
        if (this._timer !== null) this.reconnectNow();
      };
      if (global.addEventListener) global.addEventListener("online", this._onOnline);
      // A WebSocket starts with no channel; an event stream needs one, so it waits for a subscribe.
      if (transport === "ws") queueMicrotask(() => this._open());
    }

    /** The channels followed, as they were named to subscribe(). */
    get channels() {
      return [...this._channels.keys()];
    }

    /** The subscription of a followed channel (as named to subscribe(), or its id or name), or null. */
    get(channel) {
      return this._find(String(channel));
    }

    /** Follow a channel (id or name) on this connection; options: since, history, token. Returns its subscription. */
    subscribe(channel, onMessage, options = {}) {
      if (onMessage && typeof onMessage === "object") [onMessage, options] = [null, onMessage];
      const reference = String(channel ?? "");
      if (!reference) throw new TypeError("subscribe needs a channel: its id or name");
      if (this._channels.has(reference)) throw new Error(`Already subscribed to ${JSON.stringify(reference)}: unsubscribe first.`);
      if (this._stopped) throw new Error("This multiplexed connection is closed.");
      const entry = new ChannelSubscription(this, reference, options || {});
      if (onMessage) entry.on("message", onMessage);
      this._channels.set(reference, entry);
      // Subscribe once the caller has attached its listeners, so that they see every event.
      queueMicrotask(() => this._channels.get(reference) === entry && this._added(entry));
      return entry;
    }

    /** Stop following a channel (as named to subscribe(), or its id or name); false when it was not followed. */
    unsubscribe(channel) {
      const entry = this._find(String(channel));
      if (!entry) return false;
      this._forget(entry);
      if (this.mode === "channels") {
        this._fallbacks.get(entry)?.close();
        this._fallbacks.delete(entry);
        this._fallbackStatus();
      } else if (this.transport === "ws") {
        if (this._ready && entry._sent) this._send({ unsubscribe: entry.id || entry.channel, ref: this._ref({ kind: "unsubscribe" }) });
      } else {
        this._restream();
      }
      return true;
    }

    /** Publish on a followed WS channel (WebSocket only): a string as text, any other JSON value as JSON.
     * Resolves with the server's answer ({channel, id, position}); rejects with {code, error, message}. */
    publish(channel, payload) {
      if (this.transport !== "ws") return Promise.reject(new Error("publish() needs transport \"ws\"; publish to SSE channels with POST /api/v1/channels/<id>/messages"));
      const entry = this._find(String(channel));
      if (!entry) return Promise.reject(Object.assign(new Error(`Not subscribed to ${JSON.stringify(channel)}.`), { code: 4404, error: "not_subscribed" }));
      if (this.mode === "channels") {
        const sub = this._fallbacks.get(entry);
        if (typeof payload !== "string" && sub?.payload !== "json") return Promise.reject(new TypeError('Without payload: "json", the one-channel fallback publishes strings only.'));
        return sub?.send(payload) ? Promise.resolve({ channel: entry.id || entry.channel, fallback: true }) : Promise.reject(notConnected());
      }
      if (!this._ready) return Promise.reject(notConnected());
      return new Promise((resolve, reject) => {
        this._send({ publish: entry.id || entry.channel, payload, ref: this._ref({ kind: "publish", resolve, reject }) });
      });
    }

    /** Stop for good: close the connection (or every one-channel fallback) and cancel any reconnect. */
    close() {
      if (this._stopped) return;
      this._stopped = true;
      this._clearTimers();
      if (global.removeEventListener) global.removeEventListener("online", this._onOnline);
      for (const sub of this._fallbacks.values()) sub.close();
      this._fallbacks.clear();
      for (const entry of this._channels.values()) clearTimeout(entry._retry);
      this._dropSocket();
      this._setState("closed", { reason: "closed by the page" });
    }

    /** Reconnect at once instead of waiting for the backoff timer. */
    reconnectNow() {
      if (this._stopped) return;
      if (this.mode === "channels") {
        for (const sub of this._fallbacks.values()) sub.reconnectNow();
        return;
      }
      this._clearTimers();
      this._dropSocket();
      this._open();
    }

    // --- shared internals ------------------------------------------------------------------

    _find(reference) {
      const named = this._channels.get(reference);
      if (named) return named;
      for (const entry of this._channels.values()) if (entry._matches(reference)) return entry;
      return null;
    }

    _forget(entry) {
      if (this._channels.get(entry.channel) === entry) this._channels.delete(entry.channel);
      clearTimeout(entry._retry);
      entry.state = "closed";
    }

    _added(entry) {
      if (this._stopped) return;
      if (this.mode === "channels") this._openFallback(entry);
      else if (this.transport === "ws") {
        if (this._ready) this._subscribeFrame(entry);
      } else this._restream();
    }

    _setState(state, extra) {
      this.state = state;
      this._emit("status", { state, attempt: this._attempt, mode: this.mode, ...extra });
    }

    _connected() {
      this._setState("open");
      clearTimeout(this._stableTimer);
      this._stableTimer = setTimeout(() => {
        this._attempt = 0;
      }, this.stableAfter);
    }

    _scheduleReconnect(extra) {
      if (this._stopped) return;
      clearTimeout(this._stableTimer);
      const ceiling = Math.min(this.maxDelay, this.minDelay * 2 ** this._attempt);
      // "Equal jitter", as Realtime.connect: at least half the backoff.
      const delay = Math.round(ceiling / 2 + Math.random() * (ceiling / 2));
      this._attempt += 1;
      this._setState("reconnecting", { delay, ...extra });
      this._timer = setTimeout(() => {
        this._timer = null;
        this._open();
      }, delay);
    }

    _stopRefused(detail) {
      this._emit("error", { ...detail, permanent: true });
      this._stopped = true;
      this._clearTimers();
      this._dropSocket();
      this._setState("closed", { code: detail.code, reason: describe(detail.code, detail.error), refused: true });
    }

    _clearTimers() {
      clearTimeout(this._timer);
      clearTimeout(this._stableTimer);
      this._timer = null;
    }

    _dropSocket() {
      const socket = this._socket;
      this._socket = null;
      this._ready = false;
      this._failPending();
      if (!socket) return;
      if (socket instanceof global.WebSocket) {
        socket.onopen = socket.onmessage = socket.onclose = socket.onerror = null;
        if (socket.readyState === WebSocket.CONNECTING || socket.readyState === WebSocket.OPEN) socket.close(1000);
      } else {
        socket.close();
      }
    }

    _open({ changed = false } = {}) {
      if (this._stopped || this.mode === "channels") return;
      if (this.transport === "sse" && this._channels.size === 0) {
        this._setState("idle");
        return;
      }
      if (changed) this._setState("connecting", { reason: "channels changed" });
      else this._setState(this._attempt === 0 && this.mode === null ? "connecting" : "reconnecting", { delay: 0 });
      if (this.transport === "ws") this._openWebSocket();
      else this._openEventSource();
    }

    /** Whether the server answers HTTP at all: an outage is retried, a missing endpoint falls back. */
    async _serverAnswers() {
      try {
        await fetch(new URL(`${this.baseUrl}events?upgrade=0`, global.location.href), { credentials: "omit", cache: "no-store" });
        return true;
      } catch {
        return false;
      }
    }

    // --- fallback: one Realtime.connect per channel ----------------------------------------

    _fallBack(reason) {
      this._clearTimers();
      this._dropSocket();
      this.mode = "channels";
      this._attempt = 0;
      this._emit("fallback", { reason });
      for (const entry of this._channels.values()) this._openFallback(entry);
      this._fallbackStatus();
    }

    _openFallback(entry) {
      const sub = Realtime.connect({
        channel: entry.channel,
        transport: this.transport,
        clientId: this.clientId || undefined,
        echo: this.echo,
        token: entry.token || undefined,
        payload: this.payload || undefined,
        since: entry.position ?? undefined,
        history: entry._history && !entry._everSubscribed,
        baseUrl: `${this.baseUrl}channels/`,
        minDelay: this.minDelay,
        maxDelay: this.maxDelay,
        stableAfter: this.stableAfter,
      });
      this._fallbacks.set(entry, sub);
      sub.on("message", (message) => entry._deliver(message));
      sub.on("gap", (gap) => entry._emit("gap", { ...gap, channel: entry.channel }));
      for (const control of ["join", "leave"]) sub.on(control, (member) => entry._emit(control, member));
      sub.on("error", (error) => {
        if (entry._fail(error)) {
          this._forget(entry);
          this._fallbacks.delete(entry);
        }
      });
      sub.on("status", (detail) => {
        if (detail.state === "open") entry._subscribed({ position: entry.position });
        else if (entry.state !== "closed") entry.state = "pending";
        this._fallbackStatus(detail);
      });
    }

    _fallbackStatus(detail) {
      if (this._stopped) return;
      const states = [...this._fallbacks.values()].map((sub) => sub.state).filter((state) => state !== "closed");
      let state = "idle";
      if (states.length && states.every((each) => each === "open")) state = "open";
      else if (states.includes("reconnecting")) state = "reconnecting";
      else if (states.length) state = "connecting";
      if (state !== this.state || state === "reconnecting") this._setState(state, state === "reconnecting" ? { delay: detail?.delay ?? null } : {});
    }

    // --- WebSocket: /api/v1/connect ---------------------------------------------------------

    _send(frame) {
      this._socket.send(JSON.stringify(frame));
    }

    _ref(pending) {
      const ref = this._nextRef++;
      this._refs.set(ref, pending);
      return ref;
    }

    _failPending() {
      const pending = [...this._refs.values()];
      this._refs.clear();
      for (const each of pending) if (each.kind === "publish") each.reject(notConnected());
      for (const entry of this._channels.values()) {
        if (entry.state !== "closed") entry.state = "pending";
        entry._sent = false;
      }
    }

    _subscribeFrame(entry) {
      clearTimeout(entry._retry);
      if (!this._ready || entry.state === "closed") return;
      const frame = { subscribe: entry.id || entry.channel, ref: this._ref({ kind: "subscribe", entry }) };
      if (entry.position !== null) frame.since = entry.position;
      if (entry.token) frame.token = entry.token;
      entry._sent = true;
      this._send(frame);
    }

    _openWebSocket() {
      const url = new URL(`${this.baseUrl}connect`, global.location.href);
      url.protocol = url.protocol === "https:" ? "wss:" : "ws:";
      if (this.clientId) url.searchParams.set("clientId", this.clientId);
      if (this.echo) url.searchParams.set("echo", "1");
      if (this.payload) url.searchParams.set("payload", this.payload);
      const socket = new WebSocket(url.toString());
      this._socket = socket;
      let opened = false;
      let greeted = false;
      let closing = null;
      socket.onopen = () => {
        opened = true;
      };
      socket.onmessage = (event) => {
        let data;
        try {
          data = JSON.parse(event.data);
        } catch {
          return;
        }
        if (!data || typeof data !== "object") return;
        if (typeof data.control !== "string") {
          this._find(String(data.channelId))?._deliver(data);
          return;
        }
        if (data.control === "connected") {
          greeted = true;
          this.mode = "multiplexed";
          this._ready = true;
          this._connected();
          for (const entry of this._channels.values()) this._subscribeFrame(entry);
        } else if (data.control === "close") closing = data;
        else this._control(data);
      };
      socket.onclose = (event) => {
        if (this._socket !== socket) return;
        this._socket = null;
        this._ready = false;
        this._failPending();
        clearTimeout(this._stableTimer);
        const code = closing ? closing.code : event.code;
        if (!greeted && this.mode === null) {
          // An older server: no WebSocket at this path (this service says 4404 not_found; others refuse the handshake).
          if (closing && closing.error === "not_found") return this._fallBack("no /api/v1/connect on this server");
          if (!opened) {
            this._serverAnswers().then((up) => {
              if (this._stopped || this._socket !== null || this._timer !== null || this.mode !== null) return;
              if (up) this._fallBack("the server refused the /api/v1/connect handshake");
              else this._scheduleReconnect({ code });
            });
            return;
          }
        }
        if (closing && PERMANENT.has(code)) return this._stopRefused(refusal(closing));
        this._scheduleReconnect({ code });
      };
    }

    _control(data) {
      const pending = data.ref !== undefined ? this._refs.get(data.ref) : undefined;
      if (pending) this._refs.delete(data.ref);
      const entry = pending?.entry && pending.entry.state !== "closed" ? pending.entry : this._find(String(data.channel ?? data.channelId ?? ""));
      switch (data.control) {
        case "subscribed":
          if (entry && entry.state !== "closed") entry._subscribed(data);
          return;
        case "published":
          pending?.resolve?.(data);
          return;
        case "gap":
          entry?._gap(data);
          return;
        case "join":
        case "leave":
          entry?._emit(data.control, { clientId: data.clientId, info: data.info ?? null });
          return;
        case "unsubscribed":
          // Answering our unsubscribe, or the server ended one channel (deleted, this clientId replaced there).
          if (!pending && entry && data.code) this._channelRefused(entry, data);
          return;
        case "error":
          if (pending?.kind === "publish") pending.reject(Object.assign(new Error(data.message || describe(data.code)), refusal(data)));
          else if (pending?.kind === "subscribe") {
            if (data.error !== "already_subscribed") this._channelRefused(pending.entry, data);
          } else if (!pending) this._emit("error", { ...refusal(data), permanent: false });
          return;
        default:
      }
    }

    _channelRefused(entry, data) {
      const permanent = PERMANENT.has(data.code) || data.error === "too_many_channels" || (data.code === 4409 && !entry._everSubscribed);
      entry._sent = false;
      if (entry._fail({ ...refusal(data), permanent })) {
        this._forget(entry);
        return;
      }
      entry.state = "pending";
      if (this.transport !== "ws") return;
      const ceiling = Math.min(this.maxDelay, this.minDelay * 2 ** entry._attempt);
      entry._attempt += 1;
      entry._retry = setTimeout(() => this._subscribeFrame(entry), Math.round(ceiling / 2 + Math.random() * (ceiling / 2)));
    }

    // --- Server-Sent Events: /api/v1/events ------------------------------------------------

    /** Reopen the stream with the channels followed now (once per batch of subscribe/unsubscribe calls). */
    _restream() {
      if (this._restreamQueued || this._stopped) return;
      this._restreamQueued = true;
      queueMicrotask(() => {
        this._restreamQueued = false;
        if (this._stopped || this.mode === "channels" || this._timer !== null) return;
        this._dropSocket();
        this._open({ changed: true });
      });
    }

    _eventsUrl({ preflight = false } = {}) {
      const url = new URL(`${this.baseUrl}events`, global.location.href);
      const entries = [...this._channels.values()];
      for (const entry of entries) url.searchParams.append("channel", entry.channel);
      for (const token of new Set(entries.map((entry) => entry.token).filter(Boolean))) url.searchParams.append("token", token);
      if (this.clientId) url.searchParams.set("clientId", this.clientId);
      if (preflight) {
        url.searchParams.set("upgrade", "0");
        return url;
      }
      if (this.echo) url.searchParams.set("echo", "1");
      if (this.payload) url.searchParams.set("payload", this.payload);
      // The stream id, as the browser's Last-Event-ID would carry it: each channel's id and position.
      const positions = entries.filter((entry) => entry.id !== null && entry.position !== null);
      if (positions.length) url.searchParams.set("lastEventId", positions.map((entry) => `${encodeURIComponent(entry.id)}:${entry.position}`).join(","));
      return url;
    }

    async _openEventSource() {
      // Holds the place of the stream while the preflight runs, so that a newer open or close supersedes it.
      const token = { close() {} };
      this._socket = token;
      // A position is kept by channel id: a channel named otherwise is looked up first (the preflight).
      if ([...this._channels.values()].some((entry) => entry.id === null && entry.position !== null)) {
        const verdict = await this._preflight();
        if (this._socket !== token) return;
        if (verdict !== "ok") {
          this._socket = null;
          this._afterPreflight(verdict);
          return;
        }
      }
      const source = new EventSource(this._eventsUrl().toString());
      this._socket = source;
      let opened = false;
      let browserRetrying = false;
      source.onopen = () => {
        opened = true;
        browserRetrying = false;
      };
      source.addEventListener("stream-open", (event) => {
        const body = JSON.parse(event.data);
        this.mode = "multiplexed";
        for (const described of body.channels || []) {
          const entry = [...this._channels.values()].find((each) => each._matches(described.channelId) || each._matches(described.name));
          if (entry && entry.state !== "closed") entry._subscribed(described);
        }
        this._connected();
      });
      source.addEventListener("message", (event) => {
        let data;
        try {
          data = JSON.parse(event.data);
        } catch {
          return;
        }
        this._find(String(data.channelId))?._deliver(data);
      });
      source.addEventListener("gap", (event) => {
        const body = JSON.parse(event.data);
        this._find(String(body.channelId))?._gap(body);
      });
      for (const control of ["join", "leave"]) {
        source.addEventListener(control, (event) => {
          const body = JSON.parse(event.data);
          this._find(String(body.channelId))?._emit(control, { clientId: body.clientId, info: body.info ?? null });
        });
      }
      source.addEventListener("stream-error", (event) => {
        const body = JSON.parse(event.data);
        if (body.control !== "close") {
          this._emit("error", { ...refusal(body), permanent: false });
          return;
        }
        // The stream ends: for one channel (deleted, replaced), or for all (shutting down).
        const entry = body.channelId ? this._find(String(body.channelId)) : null;
        const permanent = PERMANENT.has(body.code);
        if (entry && permanent) {
          this._channelRefused(entry, body);
          this._restream();
        } else if (permanent) this._stopRefused(refusal(body));
      });
      source.onerror = () => {
        if (this._socket !== source) return;
        if (opened && !browserRetrying && source.readyState === EventSource.CONNECTING) {
          // The browser reconnects once by itself, sending Last-Event-ID: every channel's position.
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
        // EventSource hides why a stream was refused; the preflight says it, naming the channel.
        this._preflight().then((verdict) => {
          if (this._stopped || this._socket !== null || this._timer !== null) return;
          this._afterPreflight(verdict === "ok" ? "retry" : verdict);
        });
      };
    }

    /** "ok", "missing" (no such endpoint here), "down", "retry", or {entry, body, status}. */
    async _preflight() {
      let response;
      try {
        response = await fetch(this._eventsUrl({ preflight: true }), { credentials: "omit", cache: "no-store" });
      } catch {
        return "down";
      }
      let body = {};
      try {
        body = await response.json();
      } catch {
        // Not this service's JSON: the status says enough.
      }
      if (response.ok) {
        const entries = [...this._channels.values()];
        (body.channels || []).forEach((described, index) => {
          const entry = entries[index];
          if (entry && described) {
            entry.id = described.id ?? entry.id;
            entry.name = described.name ?? entry.name;
          }
        });
        const locked = entries.find((entry, index) => body.channels?.[index]?.private && !entry.token);
        if (locked) return { entry: locked, body: { code: 4401, error: "token_required", message: null } };
        return "ok";
      }
      if (ENDPOINT_MISSING.has(response.status) && body.channel === undefined && this.mode === null) return "missing";
      const entry = body.channel !== undefined ? this._find(String(body.channel)) : null;
      return { entry, body: { ...body, code: codeOfStatus(response.status) }, status: response.status };
    }

    _afterPreflight(verdict) {
      if (verdict === "missing") return this._fallBack("no /api/v1/events on this server");
      if (verdict === "down" || verdict === "retry") return this._scheduleReconnect({});
      if (verdict === "ok") return this._open();
      const { entry, body, status } = verdict;
      if (entry) {
        // One channel may not be read: it leaves the stream if that is final, and the others go on.
        this._channelRefused(entry, { ...body, status });
        if (entry.state === "closed") return this._open({ changed: true });
        return this._scheduleReconnect({ code: body.code });
      }
      const detail = refusal(body, status);
      if (PERMANENT.has(detail.code)) return this._stopRefused(detail);
      this._emit("error", { ...detail, permanent: false });
      this._scheduleReconnect({ code: detail.code });
    }
  }

  function notConnected() {
    return Object.assign(new Error("Not connected: nothing was published."), { code: null, error: "not_connected" });
  }

  /** One connection for several channels; see docs/javascript-client.md ("Several channels on one connection"). */
  Realtime.multiplex = (options) => new Multiplex(options);
  Realtime.Multiplex = Multiplex;
  Realtime.ChannelSubscription = ChannelSubscription;
})(typeof window !== "undefined" ? window : globalThis);

/*
 * The chat page: join a WebSocket channel under a display name, read and send messages.
 *
 * The page connects with echo=1, so its own messages come back from the server like everyone
 * else's: what is on screen is exactly what the server accepted, in the server's order, and a
 * message is "yours" when its clientId is this tab's clientId.
 */
(function () {
  "use strict";

  const { pageConfig, element, timeElement, showStatus, gapText, errorText, Notices, tabTag, rememberChannelInUrl } = RealtimePage;
  const config = pageConfig();
  const form = document.getElementById("join-form");
  if (!form) return;

  const NAME_KEY = "realtime.chat.name";
  const TAG_KEY = "realtime.chat.tag";
  const MAX_RENDERED = 500;
  const channelSelect = document.getElementById("channel");
  const nameInput = document.getElementById("display-name");
  const joinButton = document.getElementById("join");
  const leaveButton = document.getElementById("leave");
  const statusLine = document.getElementById("status");
  const notices = new Notices(document.getElementById("notices"));
  const scroller = document.getElementById("scroller");
  const list = document.getElementById("messages");
  const empty = document.getElementById("empty");
  const composer = document.getElementById("composer");
  const textarea = document.getElementById("message");
  const sendButton = document.getElementById("send");
  const unavailable = document.getElementById("message-unavailable");
  const encoder = new TextEncoder();

  let subscription = null;
  let clientId = null;
  let displayName = null;

  /** A display name made safe for clientId: [A-Za-z0-9._:@-], accents dropped, the rest "_". */
  function sanitizeName(raw) {
    return raw
      .normalize("NFKD")
      .replace(/[\u0300-\u036f]/g, "")
      .replace(/[^A-Za-z0-9._:@-]+/g, "_")
      .replace(/^_+|_+$/g, "")
      .slice(0, 40);
  }

  /** The name to show for a clientId: the tag this page adds is dropped. */
  function senderName(id) {
    if (id === "server-message") return "Server";
    const match = /^(.+)-[0-9a-f]{6}$/.exec(id);
    return match ? match[1] : id;
  }

  function channelLabel(id) {
    const choice = (config.channels || []).find((channel) => channel.id === id);
    return choice ? choice.name : id;
  }

  function nearBottom() {
    return scroller.scrollHeight - scroller.scrollTop - scroller.clientHeight < 80;
  }

  function append(node) {
    const follow = nearBottom();
    list.append(node);
    empty.hidden = true;
    while (list.children.length > MAX_RENDERED) list.firstElementChild.remove();
    if (follow) scroller.scrollTop = scroller.scrollHeight;
  }

  function renderMessage(message) {
    const mine = message.clientId === clientId;
    const item = element("li", { className: `message${mine ? " mine" : ""}${message.clientId === "server-message" ? " server" : ""}` });
    item.dataset.id = message.id || "";
    item.dataset.clientId = message.clientId || "";
    const meta = element("p", { className: "meta" });
    const sender = element("span", { className: "sender", text: mine ? "You" : senderName(message.clientId || "") });
    sender.title = message.clientId || "";
    meta.append(sender, " ", timeElement(message.createdAt));
    item.append(meta, element("p", { className: "text", text: message.payload }));
    append(item);
  }

  function renderGap(gap) {
    const text = gapText(gap);
    notices.show("gap", text);
    append(element("li", { className: "divider", text: "Some messages may be missing here." }));
  }

  function setJoined(joined) {
    channelSelect.disabled = joined;
    nameInput.disabled = joined;
    joinButton.hidden = joined;
    leaveButton.hidden = !joined;
  }

  function setCanSend(canSend) {
    textarea.disabled = !canSend;
    sendButton.disabled = !canSend;
    unavailable.textContent = canSend ? "" : subscription ? " Waiting for the connection…" : " Join a channel first.";
  }

  // Who is online (a channel with presence: true): clientId -> info, from join and leave.
  const online = new Map();
  const onlineList = document.getElementById("online");
  const onlineEmpty = document.getElementById("online-empty");

  function renderOnline() {
    const names = [...online.keys()].sort().map((id) => {
      const info = online.get(id);
      const name = info && typeof info.name === "string" ? info.name : senderName(id);
      return element("li", { text: id === clientId ? `${name} (you)` : name });
    });
    onlineList.replaceChildren(...names);
    onlineEmpty.hidden = names.length > 0;
  }

  function join() {
    const name = sanitizeName(nameInput.value.trim());
    if (!name) {
      notices.show("error", "Choose a display name first.");
      nameInput.focus();
      return;
    }
    try {
      localStorage.setItem(NAME_KEY, nameInput.value.trim());
    } catch {
      // The name is only a convenience for the next visit.
    }
    const channel = channelSelect.value;
    displayName = name;
    clientId = `${name}-${tabTag(TAG_KEY)}`;
    notices.clear();
    list.replaceChildren();
    empty.hidden = false;
    rememberChannelInUrl(channel);
    setJoined(true);
    // The Join button just disappeared: keep the keyboard focus on the form until the message
    // box can take it.
    leaveButton.focus();
    let focusOnOpen = true;
    subscription = Realtime.connect({
      channel,
      transport: "ws",
      clientId,
      echo: true,
      history: true,
      baseUrl: config.channelsUrl,
    });
    const current = subscription;
    current.on("message", renderMessage);
    current.on("gap", renderGap);
    online.clear();
    renderOnline();
    current.on("join", (member) => {
      online.set(member.clientId, member.info);
      renderOnline();
    });
    current.on("leave", (member) => {
      online.delete(member.clientId);
      renderOnline();
    });
    current.on("status", (detail) => {
      if (current !== subscription) return;
      if (detail.state !== "open") {
        online.clear();
        renderOnline();
      }
      if (detail.state === "closed") {
        subscription = null;
        setJoined(false);
      }
      showStatus(statusLine, detail, { connectedText: `Connected to ${channelLabel(channel)} as ${displayName}.` });
      setCanSend(detail.state === "open");
      if (detail.state === "open") {
        notices.clear("refusal");
        if (focusOnOpen && document.activeElement === leaveButton) textarea.focus();
        focusOnOpen = false;
      }
    });
    current.on("error", (error) => {
      notices.show(error.permanent ? "error" : "refusal", errorText(error));
      if (error.code === 4409 && error.permanent) {
        // Most likely a duplicated tab that copied this tab's tag: the next Join draws a new one.
        try {
          sessionStorage.removeItem(TAG_KEY);
        } catch {
          // Without storage every load draws a new tag anyway.
        }
      }
    });
  }

  function leave() {
    if (subscription) subscription.close();
    channelSelect.focus();
  }

  function send() {
    const text = textarea.value;
    if (!text.trim()) return;
    const size = encoder.encode(text).length;
    if (config.maxMessageSize && size > config.maxMessageSize) {
      notices.show("error", `The message is ${size} bytes; this server accepts at most ${config.maxMessageSize} bytes. It was not sent.`);
      return;
    }
    if (!subscription || !subscription.send(text)) {
      notices.show("error", "Not connected: the message was not sent. It is still in the box; send it again once connected.");
      return;
    }
    textarea.value = "";
    textarea.focus();
  }

  form.addEventListener("submit", (event) => {
    event.preventDefault();
    if (!subscription) join();
  });
  leaveButton.addEventListener("click", leave);
  composer.addEventListener("submit", (event) => {
    event.preventDefault();
    send();
  });
  textarea.addEventListener("keydown", (event) => {
    if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
      event.preventDefault();
      send();
    }
  });

  try {
    nameInput.value = localStorage.getItem(NAME_KEY) || "";
  } catch {
    // No stored name.
  }
})();

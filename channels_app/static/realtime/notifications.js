/*
 * The notifications page: follow an SSE channel, newest first, with an unread count. Opened with
 * several channels (?channel=a&channel=b), it follows them all on one multiplexed event stream
 * (Realtime.multiplex, realtime-multiplex.js), each notification labelled with its channel.
 *
 * What has been read is remembered per channel as the position of the newest notification
 * marked read (localStorage), so a reload shows the recent history without counting it again.
 * Where the server allows pushes, a form sends a test notification through the HTTP API; its
 * API key stays in this tab (sessionStorage), never in a cookie or the URL.
 */
(function () {
  "use strict";

  const { pageConfig, element, timeElement, showStatus, gapText, errorText, Notices, tabTag, rememberChannelInUrl } = RealtimePage;
  const config = pageConfig();
  const form = document.getElementById("channel-form");
  const followed = config.follow || [];
  if (!form && followed.length < 2) return;

  const READ_KEY = "realtime.notifications.read.";
  const API_KEY_KEY = "realtime.apiKey";
  const MAX_RENDERED = 200;
  const baseTitle = document.title;
  const channelSelect = document.getElementById("channel");
  const statusLine = document.getElementById("status");
  const notices = new Notices(document.getElementById("notices"));
  const list = document.getElementById("notifications");
  const empty = document.getElementById("empty");
  const unreadBadge = document.getElementById("unread");
  const unreadCount = document.getElementById("unread-count");
  const markReadButton = document.getElementById("mark-read");
  const clientId = `notifications-${tabTag("realtime.notifications.tag")}`;

  let subscription = null;
  let channel = null;
  let unread = new Set();
  // The newest notification's position, by channel id: what "Mark all as read" remembers.
  let newest = new Map();
  let labels = null;

  function storage(kind) {
    try {
      return kind === "session" ? window.sessionStorage : window.localStorage;
    } catch {
      return null;
    }
  }

  function readMark(channelId) {
    const raw = storage("local")?.getItem(READ_KEY + channelId);
    const match = raw && /^(.+)-(\d+)$/.exec(raw);
    return match ? { epoch: match[1], offset: Number(match[2]) } : null;
  }

  function isUnread(message, mark) {
    if (!mark || message.offset === undefined || message.offset === null) return true;
    return !(message.epoch === mark.epoch && message.offset <= mark.offset);
  }

  function showUnread() {
    const count = unread.size;
    unreadCount.textContent = String(count);
    unreadBadge.dataset.count = String(count);
    markReadButton.disabled = count === 0;
    document.title = count ? `(${count}) ${baseTitle}` : baseTitle;
  }

  function prepend(node) {
    list.prepend(node);
    empty.hidden = true;
    while (list.children.length > MAX_RENDERED) {
      unread.delete(list.lastElementChild.dataset.id);
      list.lastElementChild.remove();
    }
  }

  function renderNotification(message) {
    const channelId = message.channelId || channel;
    const fresh = isUnread(message, readMark(channelId));
    const item = element("li", { className: `notification${fresh ? " unread" : ""}` });
    item.dataset.id = message.id || "";
    item.dataset.channel = channelId;
    const meta = element("p", { className: "meta" });
    meta.append(timeElement(message.createdAt));
    if (labels) meta.append(" ", element("span", { className: "channel", text: labels.get(channelId) || channelId }));
    if (fresh) meta.append(" ", element("span", { className: "tag", text: "Unread" }));
    item.append(meta, element("p", { className: "text", text: message.payload }));
    prepend(item);
    if (message.offset !== undefined && message.offset !== null) newest.set(channelId, `${message.epoch}-${message.offset}`);
    if (fresh) {
      unread.add(item.dataset.id);
      showUnread();
    }
  }

  function markAllRead() {
    for (const [channelId, position] of newest) storage("local")?.setItem(READ_KEY + channelId, position);
    for (const item of list.querySelectorAll(".notification.unread")) {
      item.classList.remove("unread");
      item.querySelector(".tag")?.remove();
    }
    unread = new Set();
    showUnread();
  }

  function reset() {
    if (subscription) subscription.close();
    unread = new Set();
    newest = new Map();
    list.replaceChildren();
    empty.hidden = false;
    notices.clear();
    showUnread();
  }

  function showGap(gap) {
    notices.show("gap", gapText(gap));
    prepend(element("li", { className: "divider", text: "Some notifications may be missing here." }));
  }

  function showError(error) {
    notices.show(error.permanent ? "error" : "refusal", errorText(error));
  }

  function listen() {
    reset();
    channel = channelSelect.value;
    labels = null;
    // Picking one channel leaves the multiplexed stream for good (the address keeps that channel only).
    document.getElementById("following")?.remove();
    rememberChannelInUrl(channel);
    const label = channelSelect.selectedOptions[0]?.textContent.trim() || channel;
    const current = Realtime.connect({ channel, transport: "sse", clientId, history: true, baseUrl: config.channelsUrl });
    subscription = current;
    current.on("message", renderNotification);
    current.on("gap", showGap);
    current.on("status", (detail) => {
      if (current !== subscription) return;
      showStatus(statusLine, detail, { connectedText: `Listening to ${label}.` });
      if (detail.state === "open") notices.clear("refusal");
    });
    current.on("error", showError);
  }

  /** Every channel of ?channel=a&channel=b on one event stream. */
  function listenToAll() {
    reset();
    channel = channelSelect?.value || followed[0].id;
    labels = new Map(followed.map((each) => [each.id, each.name]));
    const baseUrl = config.channelsUrl.replace(/channels\/$/, "");
    const current = Realtime.multiplex({ transport: "sse", clientId, baseUrl });
    subscription = current;
    const connectedText = `Listening to ${followed.map((each) => each.name).join(", ")}.`;
    current.on("status", (detail) => {
      if (current !== subscription) return;
      showStatus(statusLine, detail, { connectedText });
      if (detail.state === "open") notices.clear("refusal");
    });
    current.on("error", showError);
    for (const each of followed) {
      const followedChannel = current.subscribe(each.id, renderNotification, { history: true });
      followedChannel.on("gap", showGap);
      followedChannel.on("error", showError);
    }
  }

  form?.addEventListener("submit", (event) => {
    event.preventDefault();
    listen();
  });
  markReadButton.addEventListener("click", markAllRead);
  if (followed.length > 1) listenToAll();
  else listen();

  const pushForm = document.getElementById("push-form");
  if (!pushForm) return;
  const pushText = document.getElementById("push-text");
  const apiKeyInput = document.getElementById("api-key");
  const pushResult = document.getElementById("push-result");
  apiKeyInput.value = storage("session")?.getItem(API_KEY_KEY) || "";

  pushForm.addEventListener("submit", async (event) => {
    event.preventDefault();
    const payload = pushText.value;
    if (!payload.trim()) {
      pushResult.textContent = "Write the notification's text first.";
      pushText.focus();
      return;
    }
    const apiKey = apiKeyInput.value.trim();
    const session = storage("session");
    if (apiKey) session?.setItem(API_KEY_KEY, apiKey);
    else session?.removeItem(API_KEY_KEY);
    const headers = { "Content-Type": "application/json" };
    if (apiKey) headers.Authorization = `Bearer ${apiKey}`;
    pushResult.dataset.outcome = "pending";
    pushResult.textContent = "Sending…";
    let response;
    try {
      response = await fetch(`${config.channelsUrl}${encodeURIComponent(channel)}/messages`, {
        method: "POST",
        headers,
        body: JSON.stringify({ payload }),
        credentials: "omit",
        cache: "no-store",
      });
    } catch {
      pushResult.dataset.outcome = "error";
      pushResult.textContent = "Not sent: the server could not be reached.";
      return;
    }
    let body = {};
    try {
      body = await response.json();
    } catch {
      // The status alone explains it.
    }
    if (response.ok) {
      pushResult.dataset.outcome = "ok";
      pushResult.textContent = `Sent (position ${body.position}).`;
      pushText.value = "";
      pushText.focus();
      return;
    }
    pushResult.dataset.outcome = "error";
    const hint = response.status === 401 ? " Enter a valid API key." : "";
    pushResult.textContent = `Not sent (HTTP ${response.status}): ${body.message || response.statusText}${hint}`;
  });
})();

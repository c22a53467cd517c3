/*
 * Helpers shared by the chat and notifications pages: the page's settings, connection status
 * and notices in words, and times. Everything the server sends is put on the page with
 * textContent, never as HTML.
 */
(function (global) {
  "use strict";

  const GAP_EXPLANATIONS = {
    epoch_changed:
      "Some messages may have been lost: the server restarted and lost its message history, so messages sent while this page was disconnected cannot be recovered.",
    expired:
      "Some messages were lost: the server no longer keeps all the messages sent while this page was disconnected (its history is limited). What follows is the oldest it still has.",
    unknown_position:
      "Some messages may have been lost: the server no longer knows the last message this page received.",
    dropped: "Some messages may have been lost on their way to this page.",
  };

  /** The settings the server rendered into the page (a json_script block). */
  function pageConfig() {
    const element = document.getElementById("realtime-page-config");
    return element ? JSON.parse(element.textContent) : {};
  }

  /** A new element with text content (never HTML) and attributes. */
  function element(tag, { text, className, attributes } = {}) {
    const node = document.createElement(tag);
    if (className) node.className = className;
    if (text !== undefined && text !== null) node.textContent = String(text);
    for (const [name, value] of Object.entries(attributes || {})) node.setAttribute(name, value);
    return node;
  }

  /** A <time> element showing a server timestamp in the reader's local time. */
  function timeElement(iso) {
    const moment = iso ? new Date(iso) : new Date();
    const valid = !Number.isNaN(moment.getTime());
    const node = element("time", {
      text: valid ? moment.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit", second: "2-digit" }) : String(iso),
      className: "time",
    });
    if (valid) {
      node.dateTime = moment.toISOString();
      node.title = moment.toLocaleString();
    }
    return node;
  }

  /** The connection status in words. */
  function statusText(detail, { connectedText }) {
    switch (detail.state) {
      case "connecting":
        return "Connecting…";
      case "open":
        return connectedText;
      case "reconnecting":
        if (detail.delay) {
          const seconds = Math.max(1, Math.round(detail.delay / 1000));
          return `Connection lost. Reconnecting in ${seconds} s (attempt ${detail.attempt})…`;
        }
        return "Connection lost. Reconnecting…";
      case "closed":
        return detail.reason ? `Disconnected: ${detail.reason}` : "Disconnected.";
      default:
        return "Not connected.";
    }
  }

  /** Show a status line's text and state (data-state drives its colour and icon). */
  function showStatus(node, detail, words) {
    node.dataset.state = detail.state;
    const text = statusText(detail, words);
    if (node.textContent !== text) node.textContent = text;
  }

  /** What a gap means for the reader. */
  function gapText(gap) {
    return GAP_EXPLANATIONS[gap.reason] || GAP_EXPLANATIONS.dropped;
  }

  /** A refusal or error in words: a headline by code, then the server's own explanation. */
  function errorText(error) {
    const headline = error.description || Realtime.describe(error.code, error.error);
    const code = error.code ? ` (code ${error.code})` : "";
    const detail = error.message && error.message !== headline ? ` ${error.message}` : "";
    return `${headline}${detail}${code}`;
  }

  /** Notices (refusals, lost messages) in a role="alert" region, each dismissible. */
  class Notices {
    constructor(container) {
      this.container = container;
    }

    show(kind, text) {
      const last = this.container.lastElementChild;
      if (last && last.dataset.text === text) return last;
      const notice = element("div", { className: `notice notice-${kind}` });
      notice.dataset.kind = kind;
      notice.dataset.text = text;
      notice.append(element("p", { text }));
      const dismiss = element("button", { text: "Dismiss", className: "button-quiet", attributes: { type: "button" } });
      dismiss.addEventListener("click", () => notice.remove());
      notice.append(dismiss);
      this.container.append(notice);
      while (this.container.children.length > 4) this.container.firstElementChild.remove();
      return notice;
    }

    clear(kind) {
      for (const notice of [...this.container.children]) {
        if (!kind || notice.dataset.kind === kind) notice.remove();
      }
    }
  }

  /** A random tag kept for this tab, so a reload keeps the same identity. */
  function tabTag(key) {
    let tag = null;
    try {
      tag = global.sessionStorage.getItem(key);
    } catch {
      // Storage can be disabled; a fresh tag per load is fine then.
    }
    if (!tag || !/^[0-9a-f]{6}$/.test(tag)) {
      const bytes = new Uint8Array(3);
      global.crypto.getRandomValues(bytes);
      tag = Array.from(bytes, (byte) => byte.toString(16).padStart(2, "0")).join("");
      try {
        global.sessionStorage.setItem(key, tag);
      } catch {
        // See above.
      }
    }
    return tag;
  }

  /** Keep ?channel= in the address bar in step with the picker, without reloading. */
  function rememberChannelInUrl(channel) {
    const url = new URL(global.location.href);
    url.searchParams.set("channel", channel);
    global.history.replaceState(null, "", url);
  }

  global.RealtimePage = { pageConfig, element, timeElement, showStatus, gapText, errorText, Notices, tabTag, rememberChannelInUrl };
})(window);

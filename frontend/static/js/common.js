// Helpers shared by every page: JSON fetch with readable errors, and locale formatting.
"use strict";

(function () {
  class ApiError extends Error {
    constructor(status, body) {
      super(errorMessage(body, status));
      this.status = status;
      this.body = body;
    }
  }

  function fieldFromLoc(loc) {
    // FastAPI locations look like ["body", "hyperparameters", "learning_rate"].
    return (loc || []).filter((part) => part !== "body" && typeof part === "string").join(".");
  }

  // Pydantic prefixes validator messages with "Value error, "; people need only the rest.
  function cleanMessage(msg) {
    return String(msg || "").replace(/^Value error, /, "");
  }

  function errorMessage(body, status) {
    const detail = body && body.detail;
    if (typeof detail === "string") return detail;
    if (Array.isArray(detail)) {
      return detail
        .map((e) => {
          const field = fieldFromLoc(e.loc);
          return field ? `${field}: ${cleanMessage(e.msg)}` : cleanMessage(e.msg);
        })
        .join("\n");
    }
    if (typeof body === "string" && body.trim()) return body.trim().slice(0, 500);
    return status ? `Request failed (HTTP ${status})` : "Request failed";
  }

  // The studio_csrf cookie's value: the server takes a write that comes with the session cookie only when the
  // request echoes it (X-CSRF-Token), which a page of another origin cannot do (backend/security/csrf.py).
  function csrfToken() {
    const match = document.cookie.match(/(?:^|;\s*)studio_csrf=([^;]+)/);
    return match ? decodeURIComponent(match[1]) : "";
  }

  const SAFE_METHODS = new Set(["GET", "HEAD", "OPTIONS"]);

  async function fetchJSON(url, options = {}) {
    const opts = { credentials: "same-origin", ...options };
    opts.headers = { Accept: "application/json", ...(options.headers || {}) };
    if (!SAFE_METHODS.has((opts.method || "GET").toUpperCase())) opts.headers["X-CSRF-Token"] = csrfToken();
    if (opts.body !== undefined && typeof opts.body !== "string" && !(opts.body instanceof FormData)) {
      opts.body = JSON.stringify(opts.body);
      opts.headers["Content-Type"] = "application/json";
    }
    let response;
    try {
      response = await fetch(url, opts);
    } catch (err) {
      throw new ApiError(0, { detail: "Network error: the server could not be reached." });
    }
    const text = await response.text();
    let body = text;
    try {
      body = text ? JSON.parse(text) : null;
    } catch (err) {
      /* not JSON: keep the text */
    }
    if (response.status === 401 && !url.includes("/login")) {
      window.location.assign(`/login?next=${encodeURIComponent(location.pathname + location.search)}`);
    }
    if (!response.ok) throw new ApiError(response.status, body);
    return body;
  }

  function showError(el, message) {
    if (!el) return;
    el.textContent = message || "";
    el.hidden = !message;
  }

  const dateTimeFormat = new Intl.DateTimeFormat(undefined, { dateStyle: "medium", timeStyle: "short" });
  const dateFormat = new Intl.DateTimeFormat(undefined, { dateStyle: "medium" });
  const timeFormat = new Intl.DateTimeFormat(undefined, { timeStyle: "medium" });

  function formatTime(iso, style = "datetime") {
    const d = iso instanceof Date ? iso : new Date(iso);
    if (Number.isNaN(d.getTime())) return "";
    if (style === "date") return dateFormat.format(d);
    if (style === "time") return timeFormat.format(d);
    return dateTimeFormat.format(d);
  }

  function timeElement(iso, style = "datetime") {
    const el = document.createElement("time");
    el.dateTime = iso;
    el.dataset.style = style;
    el.textContent = formatTime(iso, style);
    el.title = new Date(iso).toLocaleString();
    return el;
  }

  function formatTimes(root = document) {
    root.querySelectorAll("time[datetime]").forEach((el) => {
      const text = formatTime(el.dateTime, el.dataset.style);
      if (text) {
        el.textContent = text;
        el.title = new Date(el.dateTime).toLocaleString();
      }
    });
  }

  function formatBytes(n) {
    // Decimal units (1 MB = 10^6 bytes), matching the server's log lines.
    if (n == null) return "—";
    const units = ["B", "kB", "MB", "GB", "TB"];
    let i = 0;
    while (n >= 1000 && i < units.length - 1) {
      n /= 1000;
      i += 1;
    }
    return i === 0 ? `${n} B` : `${n.toFixed(i >= 3 ? 2 : 1)} ${units[i]}`;
  }

  function formatDuration(seconds) {
    if (seconds == null || !Number.isFinite(seconds)) return "—";
    const s = Math.max(0, Math.round(seconds));
    const h = Math.floor(s / 3600);
    const m = Math.floor((s % 3600) / 60);
    const sec = s % 60;
    if (h) return `${h}h ${String(m).padStart(2, "0")}m`;
    if (m) return `${m}m ${String(sec).padStart(2, "0")}s`;
    return `${sec}s`;
  }

  function formatLoss(x) {
    return x == null ? "—" : Number(x).toFixed(4);
  }

  function badge(status) {
    const el = document.createElement("span");
    setBadge(el, status);
    return el;
  }

  function setBadge(el, status) {
    el.className = `badge badge-${status}`;
    el.dataset.status = status;
    el.textContent = status;
  }

  // An element with properties (className, textContent, href, …) and children (nodes or strings).
  function el(tag, props = {}, ...children) {
    const node = Object.assign(document.createElement(tag), props);
    node.append(...children);
    return node;
  }

  window.Studio = {
    el,
    ApiError,
    fetchJSON,
    csrfToken,
    errorMessage,
    cleanMessage,
    fieldFromLoc,
    showError,
    formatTime,
    formatTimes,
    timeElement,
    formatBytes,
    formatDuration,
    formatLoss,
    badge,
    setBadge,
  };

  document.addEventListener("DOMContentLoaded", () => formatTimes());
})();

// Workers page, live over SSE (/api/workers/stream): a `workers` event with every worker (and whether it is
// live), the queue depth and the server's clock, on connect and whenever a worker reports, goes silent, or a
// job is queued or taken. "Last heartbeat" counts up every second on the server's clock, so a browser whose
// clock is off still shows how long ago the worker last reported.
"use strict";

(function () {
  const $ = (id) => document.getElementById(id);
  const table = $("worker-table");
  const tbody = table.querySelector("tbody");
  const depth = $("queue-depth");
  const GIB = 1024 ** 3;
  const relative = new Intl.RelativeTimeFormat(undefined, { style: "narrow", numeric: "always" });
  // Browser clock minus server clock, from the last event (or the page's first paint).
  let skew = table.dataset.now ? Date.now() - Date.parse(table.dataset.now) : 0;

  const el = Studio.el;

  function ago(iso) {
    const seconds = Math.max(0, Math.round((Date.now() - skew - Date.parse(iso)) / 1000));
    if (seconds < 60) return relative.format(-seconds, "second");
    if (seconds < 3600) return relative.format(-Math.floor(seconds / 60), "minute");
    if (seconds < 86400) return relative.format(-Math.floor(seconds / 3600), "hour");
    return relative.format(-Math.floor(seconds / 86400), "day");
  }

  function seenCell(w) {
    const time = el("time", { dateTime: w.last_seen_at, title: Studio.formatTime(w.last_seen_at) });
    time.dataset.style = "ago";
    time.textContent = ago(w.last_seen_at);
    return el("td", { className: "seen-cell" }, time);
  }

  function deviceCell(w) {
    const cell = el("td", {}, w.device);
    if (w.bf16) cell.append(" ", el("span", { className: "muted small", textContent: "bf16" }));
    const gpus = (w.details || {}).gpu_count;
    if (gpus > 1) cell.append(" ", el("span", { className: "muted small", textContent: `× ${gpus}` }));
    if (w.compute_capability) {
      cell.append(" ", el("span", { className: "muted small", title: "CUDA compute capability", textContent: `sm ${w.compute_capability}` }));
    }
    if ((w.details || {}).bitsandbytes) {
      cell.append(" ", el("span", { className: "muted small", title: "can train 4-bit (QLoRA)", textContent: "bitsandbytes" }));
    }
    return cell;
  }

  function diskCell(w) {
    if (w.disk_free_bytes == null) return el("td", { className: "num" }, el("span", { className: "muted", textContent: "–" }));
    return el("td", { className: "num", textContent: `${(w.disk_free_bytes / GIB).toFixed(1)} GiB` });
  }

  function peakCell(w) {
    // A training worker's fastest matmul at start (workers/flops.py), in its jobs' precision; none on analysis ones.
    const peak = (w.details || {}).peak_matmul;
    if (!peak) return el("td", { className: "num" }, el("span", { className: "muted", textContent: "–" }));
    const rate = Math.round(peak.flops_per_second / 1e9).toLocaleString("en-US");
    return el("td", { className: "num" }, `${rate} GFLOP/s `, el("span", { className: "muted small", textContent: peak.dtype }));
  }

  function jobCell(w) {
    // Another user's job is theirs: the worker shows as busy, without its id.
    if (!w.current_job_id) return el("td", {}, el("span", { className: "muted", textContent: w.busy ? "busy" : "idle" }));
    return el("td", {}, el("a", { href: `/jobs/${w.current_job_id}`, textContent: `Job ${w.current_job_id}` }));
  }

  function row(w) {
    const tr = el("tr");
    Object.assign(tr.dataset, { worker: w.name, live: String(w.live), seen: w.last_seen_at });
    const state = el("span", { className: `badge badge-${w.live ? "succeeded" : "failed"}`, textContent: w.live ? "live" : "silent" });
    const cells = [
      [el("td", { className: "cell-title", textContent: w.name }), ""],
      [el("td", { textContent: w.queue === "studio" ? "training" : "analysis, imports" }), "Serves"],
      [deviceCell(w), "Device"],
      [el("td", { className: "num", textContent: `${(w.device_memory_bytes / GIB).toFixed(1)} GiB` }), "Memory"],
      [diskCell(w), "Free disk"],
      [peakCell(w), "Peak matmul"],
      [jobCell(w), "Current job"],
      [seenCell(w), "Last heartbeat"],
      [el("td", {}, state), "State"],
    ];
    cells.forEach(([cell, label]) => {
      if (label) cell.dataset.label = label;
      tr.append(cell);
    });
    return tr;
  }

  function show(state) {
    skew = Date.now() - Date.parse(state.now);
    tbody.replaceChildren(...state.items.map(row));
    const any = state.items.length > 0;
    table.closest(".table-wrap").hidden = !any;
    $("workers-empty").hidden = any;
    depth.dataset.queued = String(state.queued);
    depth.textContent = `${state.queued} job${state.queued === 1 ? "" : "s"} waiting in the queue`;
  }

  function tick() {
    tbody.querySelectorAll('time[data-style="ago"]').forEach((t) => (t.textContent = ago(t.dateTime)));
  }

  function follow() {
    const source = new EventSource("/api/workers/stream");
    source.addEventListener("workers", (e) => show(JSON.parse(e.data)));
    table.dataset.live = "connecting";
    source.addEventListener("open", () => (table.dataset.live = "open"));
    source.addEventListener("error", () => (table.dataset.live = "reconnecting"));
  }

  follow();
  setInterval(tick, 1000);
})();

// Job list: filter (status, kind, name), sort (created, name, duration, final loss) and live updates.
// Live over SSE (/api/jobs/stream): a `job` event per visible job on connect, then one per change, new jobs
// included. EventSource reconnects by itself after an error, and the snapshot it gets resyncs every row.
// Filter and sort live in the URL, so a reload keeps them.
"use strict";

(function () {
  const ACTIVE = new Set(["queued", "running"]);
  const $ = (id) => document.getElementById(id);
  const table = $("job-table");
  const tbody = table.querySelector("tbody");
  const text = $("job-filter-text");
  const statusSel = $("job-filter-status");
  const kindSel = $("job-filter-kind");
  // Default order: newest first. Names sort A→Z first, numbers (loss, duration) smallest first.
  let sort = { key: "created", dir: "descending" };

  /* ---------- cells ---------- */

  function setProgress(wrap, job) {
    const bar = wrap.querySelector("progress");
    // Before the worker counts the steps, a queued job shows its max_steps ("0 / 100", not "0 / ?").
    const total = job.total_steps ?? (job.hyperparameters || {}).max_steps ?? null;
    wrap.dataset.step = job.current_step;
    wrap.dataset.total = total ?? "";
    bar.max = total || 1;
    bar.value = total ? Math.min(job.current_step, total) : 0;
    wrap.querySelector(".progress-label").textContent = `${job.current_step} / ${total ?? "?"}`;
  }

  function progressCell(job) {
    const wrap = document.createElement("div");
    wrap.className = "progress-cell";
    const bar = document.createElement("progress");
    bar.setAttribute("aria-label", "Training progress");
    const label = document.createElement("span");
    label.className = "progress-label";
    wrap.append(bar, label);
    setProgress(wrap, job);
    return wrap;
  }

  function link(href, label) {
    const a = document.createElement("a");
    a.href = href;
    a.textContent = label;
    return a;
  }

  function muted(label) {
    const span = document.createElement("span");
    span.className = "muted";
    span.textContent = label;
    return span;
  }

  function newRow(job) {
    const row = tbody.insertRow();
    row.dataset.jobId = job.id;
    const pick = document.createElement("input");
    pick.type = "checkbox";
    pick.name = "ids";
    pick.value = job.id;
    pick.setAttribute("aria-label", `Compare ${job.name}`);
    const base = job.base_model_id
      ? link(`/models/${job.base_model_id}`, job.base_model_name || `Model ${job.base_model_id}`)
      : muted(job.architecture || "—");
    const cells = [
      ["select-cell", "", pick],
      ["cell-title", "", link(`/jobs/${job.id}`, job.name)],
      ["status-cell", "Status", Studio.badge(job.status)],
      ["", "Kind", job.kind],
      ["", "Method", job.method || "—"],
      ["", "Base", base],
      ["", "Dataset", link(`/datasets/${job.dataset_id}`, job.dataset_name || `Dataset ${job.dataset_id}`)],
      ["progress-td", "Progress", progressCell(job)],
      ["num duration-cell", "Duration", "—"],
      ["num loss-cell", "Final loss", ""],
      ["", "Created", Studio.timeElement(job.created_at)],
    ];
    cells.forEach(([cls, label, content]) => {
      const cell = row.insertCell();
      cell.append(content);
      if (cls) cell.className = cls;
      if (label) cell.dataset.label = label;
    });
    return row;
  }

  function update(job) {
    const row = tbody.querySelector(`tr[data-job-id="${job.id}"]`) || newRow(job);
    Object.assign(row.dataset, {
      status: job.status,
      kind: job.kind,
      name: job.name,
      created: job.created_at,
      started: job.started_at || "",
      finished: job.finished_at || "",
      loss: job.final_loss ?? "",
    });
    const badge = row.querySelector(".status-cell .badge");
    if (badge.dataset.status !== job.status) Studio.setBadge(badge, job.status);
    setProgress(row.querySelector(".progress-cell"), job);
    row.querySelector(".loss-cell").textContent = Studio.formatLoss(job.final_loss);
  }

  function duration(row) {
    if (!row.dataset.started) return null;
    const end = row.dataset.finished ? Date.parse(row.dataset.finished) : Date.now();
    return Math.max(0, (end - Date.parse(row.dataset.started)) / 1000);
  }

  function showDurations() {
    for (const row of tbody.rows) {
      const s = duration(row);
      row.querySelector(".duration-cell").textContent = s == null ? "—" : Studio.formatDuration(s);
    }
  }

  /* ---------- filter and sort ---------- */

  function matches(row) {
    const q = text.value.trim().toLowerCase();
    const status = statusSel.value;
    if (q && !row.dataset.name.toLowerCase().includes(q)) return false;
    if (kindSel.value && row.dataset.kind !== kindSel.value) return false;
    if (status === "active") return ACTIVE.has(row.dataset.status);
    return !status || row.dataset.status === status;
  }

  const SORT_VALUE = {
    name: (row) => row.dataset.name.toLowerCase(),
    created: (row) => Date.parse(row.dataset.created) || Number(row.dataset.jobId),
    loss: (row) => (row.dataset.loss === "" ? null : Number(row.dataset.loss)),
    duration: duration,
  };

  function compare(a, b) {
    const va = SORT_VALUE[sort.key](a);
    const vb = SORT_VALUE[sort.key](b);
    // Rows without a value (no loss yet, never started) go last in either direction.
    if (va == null || vb == null) return va == null ? (vb == null ? 0 : 1) : -1;
    const order = typeof va === "string" ? va.localeCompare(vb) : va - vb;
    return (sort.dir === "ascending" ? order : -order) || Number(b.dataset.jobId) - Number(a.dataset.jobId);
  }

  function apply() {
    const rows = [...tbody.rows].sort(compare);
    // Move rows only when the order changed: moving a row blurs a focused checkbox in it.
    if (rows.some((row, i) => tbody.rows[i] !== row)) rows.forEach((row) => tbody.append(row));
    let shown = 0;
    rows.forEach((row) => {
      row.hidden = !matches(row);
      if (!row.hidden) shown += 1;
    });
    table.querySelectorAll("th[data-sort-key]").forEach((th) => {
      th.setAttribute("aria-sort", th.dataset.sortKey === sort.key ? sort.dir : "none");
    });
    const any = rows.length > 0;
    $("jobs-filtered-empty").hidden = !any || shown > 0;
    table.closest(".table-wrap").hidden = !any || shown === 0;
    $("job-filters").hidden = !any;
    table.closest("form").querySelector(".table-actions").hidden = !any || shown === 0;
    const empty = $("jobs-empty");
    if (empty) empty.hidden = any;
    $("job-count").textContent = shown === rows.length ? `${rows.length} jobs` : `${shown} of ${rows.length} jobs`;
    showDurations();
    saveState();
  }

  function saveState() {
    const params = new URLSearchParams(window.location.search);
    const set = (k, v) => (v ? params.set(k, v) : params.delete(k));
    set("q", text.value.trim());
    set("status", statusSel.value);
    set("kind", kindSel.value);
    set("sort", sort.key === "created" && sort.dir === "descending" ? "" : `${sort.key}:${sort.dir}`);
    const query = params.toString();
    history.replaceState(null, "", query ? `?${query}` : window.location.pathname);
  }

  function loadState() {
    const params = new URLSearchParams(window.location.search);
    text.value = params.get("q") || "";
    const pick = (select, value) => {
      if ([...select.options].some((o) => o.value === value)) select.value = value;
    };
    pick(statusSel, params.get("status") || "");
    pick(kindSel, params.get("kind") || "");
    const [key, dir] = (params.get("sort") || "").split(":");
    if (key in SORT_VALUE && (dir === "ascending" || dir === "descending")) sort = { key, dir };
  }

  table.querySelectorAll("button[data-sort]").forEach((button) =>
    button.addEventListener("click", () => {
      const key = button.dataset.sort;
      const first = key === "created" ? "descending" : "ascending";
      const flip = sort.dir === "ascending" ? "descending" : "ascending";
      sort = { key, dir: sort.key === key ? flip : first };
      apply();
    }),
  );
  [text, statusSel, kindSel].forEach((el) => el.addEventListener("input", apply));
  $("job-filter-clear").addEventListener("click", () => {
    text.value = "";
    statusSel.value = "";
    kindSel.value = "";
    apply();
    text.focus();
  });

  /* ---------- live ---------- */

  function isActive() {
    return [...tbody.rows].some((row) => ACTIVE.has(row.dataset.status));
  }

  // Events come in bursts (the snapshot is one per job): sort and filter once per frame, not per event.
  let pending = false;
  function applySoon() {
    if (pending) return;
    pending = true;
    requestAnimationFrame(() => {
      pending = false;
      apply();
    });
  }

  function follow() {
    const source = new EventSource("/api/jobs/stream");
    source.addEventListener("job", (e) => {
      update(JSON.parse(e.data));
      applySoon();
    });
    table.dataset.live = "connecting";
    source.addEventListener("open", () => (table.dataset.live = "open"));
    source.addEventListener("error", () => (table.dataset.live = "reconnecting"));
  }

  loadState();
  apply();
  follow();
  // Running jobs' durations count up between refreshes.
  setInterval(() => isActive() && showDurations(), 1000);
})();

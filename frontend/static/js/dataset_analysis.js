// Dataset page, worker-computed views: token statistics (charts), the dry run of one record, and hygiene with
// "apply fixes". Each asks the API, which answers at once from its cache or queues the work; we poll until done.
"use strict";

(function () {
  const $ = (id) => document.getElementById(id);
  const data = JSON.parse($("dataset-data").textContent);
  const base = `/api/datasets/${data.id}`;
  const POLL_MS = 1000;
  const POLL_LIMIT_MS = 15 * 60 * 1000;
  const PENDING = new Set(["queued", "running", "pending"]);
  const number = new Intl.NumberFormat();
  const fmt = (n) => (n == null || Number.isNaN(Number(n)) ? "—" : number.format(n));
  const pct = (x) => (x == null || !Number.isFinite(Number(x)) ? "—" : `${(Number(x) * 100).toFixed(1)}%`);
  const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));
  const cssVar = (name) => getComputedStyle(document.documentElement).getPropertyValue(name).trim();

  function settings() {
    return {
      base_model: $("analysis-base-model").value,
      objective: $("analysis-objective").value,
      max_length: $("analysis-max-length").value || "256",
      batch_size: $("analysis-batch-size").value || "8",
    };
  }

  const query = (params) =>
    new URLSearchParams(Object.entries(params).filter(([, v]) => v !== "" && v != null)).toString();

  // GET until the analysis is done or failed; `onWait` hears each pending state. Newer runs cancel older ones.
  const runs = {};
  async function poll(panel, url, onWait) {
    const run = (runs[panel] = (runs[panel] || 0) + 1);
    const deadline = Date.now() + POLL_LIMIT_MS;
    for (;;) {
      const body = await Studio.fetchJSON(url);
      if (runs[panel] !== run) return null;
      if (!body || !PENDING.has(body.status)) return body;
      onWait(body.status);
      if (Date.now() > deadline) throw new Error("Still computing after 15 minutes; try again later.");
      await sleep(POLL_MS);
      if (runs[panel] !== run) return null;
    }
  }

  function panel(prefix) {
    const status = $(`${prefix}-status`);
    const error = $(`${prefix}-error`);
    return {
      wait(state) {
        status.textContent = state === "running" ? "Computing…" : "Waiting for the analysis worker…";
      },
      start() {
        Studio.showError(error, "");
        status.textContent = "Asking…";
      },
      done(text = "") {
        status.textContent = text;
      },
      fail(message) {
        status.textContent = "";
        Studio.showError(error, message);
      },
    };
  }

  async function analyse(prefix, url) {
    const ui = panel(prefix);
    ui.start();
    try {
      const body = await poll(prefix, url, ui.wait);
      if (body === null) return null; // superseded by a newer request
      if (body.status === "failed") {
        ui.fail(body.error || "The analysis failed.");
        return null;
      }
      ui.done();
      return body.result || {};
    } catch (err) {
      ui.fail(err.message);
      return null;
    }
  }

  /* ---------- statistics ---------- */

  const charts = {};

  function chart(id, config) {
    if (typeof Chart === "undefined") return;
    if (charts[id]) charts[id].destroy();
    Chart.defaults.color = cssVar("--muted");
    Chart.defaults.borderColor = cssVar("--border");
    Chart.defaults.font.family = getComputedStyle(document.body).fontFamily;
    charts[id] = new Chart($(id), config);
  }

  function barConfig(labels, values, colors, label) {
    return {
      type: "bar",
      data: { labels, datasets: [{ label, data: values, backgroundColor: colors, borderWidth: 0 }] },
      options: {
        responsive: true,
        maintainAspectRatio: false,
        animation: false,
        plugins: { legend: { display: false } },
        scales: { y: { beginAtZero: true, ticks: { precision: 0 } } },
      },
    };
  }

  function showStats(r, maxLength) {
    // The worker's names for a few figures have varied; read either.
    const tokens = r.tokens_total ?? r.tokens;
    const fullyTruncated = r.fully_truncated_records ?? r.records_losing_all_supervised;
    const total = Number(tokens) || 0;
    $("stats-records").textContent = fmt(r.records);
    $("stats-tokens-total").textContent = fmt(tokens);
    $("stats-supervised").textContent = `${fmt(r.supervised_tokens)} (${pct(total ? r.supervised_tokens / total : null)})`;
    $("stats-masked").textContent = `${fmt(r.masked_tokens)} (${pct(total ? r.masked_tokens / total : null)})`;
    $("stats-truncated").textContent = fmt(r.truncated_records);
    $("stats-fully-truncated").textContent = fmt(fullyTruncated);
    $("stats-fully-truncated").classList.toggle("text-danger", Number(fullyTruncated) > 0);
    $("stats-lost").textContent = fmt(r.lost_supervised_tokens);
    $("stats-lost").classList.toggle("text-danger", Number(r.lost_supervised_tokens) > 0);
    const length = r.length || {};
    $("stats-length").textContent = length.max != null ? `${fmt(length.min)} / ${fmt(length.mean)} / ${fmt(length.max)}` : "—";
    $("stats-steps").textContent = fmt(r.steps_per_epoch);
    $("stats-packing").textContent = pct(r.packing_efficiency);
    $("stats-results").hidden = false;

    const hist = r.length_histogram || r.histogram || { edges: [], counts: [] };
    const edges = hist.edges || [];
    const counts = hist.counts || [];
    const labels = counts.map((_, i) => (edges[i + 1] != null ? `${edges[i]}–${edges[i + 1]}` : `${edges[i]}+`));
    const colors = counts.map((_, i) => (Number(edges[i]) >= maxLength ? cssVar("--danger") : cssVar("--accent")));
    chart("stats-histogram", barConfig(labels, counts, colors, "records"));
    $("stats-histogram").dataset.bars = String(counts.length);

    const roles = Object.entries(r.tokens_by_role || {});
    chart("stats-roles", barConfig(roles.map(([k]) => k), roles.map(([, v]) => v), cssVar("--info"), "tokens"));
    $("stats-roles").dataset.bars = String(roles.length);
  }

  async function runStats() {
    const s = settings();
    const result = await analyse("stats", `${base}/stats?${query(s)}`);
    if (result) showStats(result, Number(s.max_length));
  }

  /* ---------- dry run ---------- */

  const indexInput = $("render-index");
  const clampIndex = (n) => Math.min(Math.max(1, Math.round(n) || 1), Math.max(1, data.record_count));

  function tokenSpan(token, position, maxLength) {
    const span = document.createElement("span");
    const cut = token.cut === true || position >= maxLength;
    span.className = `tok ${cut ? "tok-cut" : token.trained ? "tok-trained" : "tok-masked"}`;
    span.dataset.trained = String(Boolean(token.trained) && !cut);
    span.title = `token ${position + 1} · id ${token.id}${token.trained ? " · trained" : " · masked"}${cut ? " · cut" : ""}`;
    // Make whitespace visible: a newline shows as ↵ and still breaks the line.
    span.textContent = String(token.text ?? "").replaceAll("\n", "↵\n");
    return span;
  }

  function showRender(r, maxLength) {
    const tokens = r.tokens || [];
    $("render-total").textContent = fmt(r.total_tokens ?? tokens.length);
    $("render-supervised").textContent = fmt(r.supervised_tokens);
    const later = Number(r.later_block_tokens) || 0;
    $("render-truncated").textContent = r.truncated
      ? "yes"
      : later > 0
        ? `no (first block shown; ${fmt(later)} more tokens in later blocks)`
        : "no";
    $("render-lost").textContent = fmt(r.lost_supervised_tokens);
    $("render-lost").classList.toggle("text-danger", Number(r.lost_supervised_tokens) > 0);
    const view = $("render-tokens");
    view.replaceChildren(...tokens.map((t, i) => tokenSpan(t, i, maxLength)));
    view.setAttribute("aria-label", `Tokens of record ${Number(r.index ?? 0) + 1}`);
    $("render-result").hidden = false;
  }

  async function runRender() {
    const s = settings();
    const index = clampIndex(Number(indexInput.value));
    indexInput.value = String(index);
    $("render-prev").disabled = index <= 1;
    $("render-next").disabled = index >= data.record_count;
    const params = { base_model: s.base_model, objective: s.objective, max_length: s.max_length, index: index - 1 };
    const result = await analyse("render", `${base}/render?${query(params)}`);
    if (result) showRender(result, Number(s.max_length));
  }

  function step(delta) {
    indexInput.value = String(clampIndex(Number(indexInput.value) + delta));
    if (!$("render-run").disabled) runRender();
  }

  function showRecord(index0) {
    indexInput.value = String(clampIndex(index0 + 1));
    $("render").scrollIntoView({ behavior: "smooth", block: "start" });
    if (!$("render-run").disabled) runRender();
  }

  /* ---------- hygiene ---------- */

  const GROUPS = {
    "hygiene-exact": "exact_duplicates",
    "hygiene-near": "near_duplicates",
    "hygiene-conflicts": "conflicting_answers",
    "hygiene-leakage": "leakage",
  };
  const FIX_FOR = {
    "hygiene-exact": "hygiene-fix-exact",
    "hygiene-near": "hygiene-fix-near",
    "hygiene-conflicts": "hygiene-fix-conflicts",
    "hygiene-leakage": "hygiene-fix-leaked",
  };

  function indicesOf(item) {
    if (Array.isArray(item)) return item.filter(Number.isInteger);
    if (Number.isInteger(item)) return [item];
    if (item && Array.isArray(item.indices)) return item.indices;
    if (item && Number.isInteger(item.index)) return [item.index];
    return [];
  }

  // What a group says besides its record numbers: similarity, number of answers, the validation record.
  function extrasOf(item) {
    if (!item || typeof item !== "object" || Array.isArray(item)) return "";
    const parts = [];
    if (item.similarity != null) parts.push(`${pct(item.similarity)} similar`);
    if (item.answers != null) parts.push(`${fmt(item.answers)} different answers`);
    if (item.validation_index != null) parts.push(`${item.exact ? "same as" : "like"} validation record #${item.validation_index + 1}`);
    return parts.join(" · ");
  }

  function recordButton(index0, previews) {
    const b = document.createElement("button");
    b.type = "button";
    b.className = "btn btn-ghost btn-small record-link";
    b.dataset.index = String(index0);
    b.textContent = `#${index0 + 1}`;
    b.title = previews[String(index0)] ? `${previews[String(index0)]}\n\n(show in the dry run)` : "Show in the dry run";
    b.addEventListener("click", () => showRecord(index0));
    return b;
  }

  function snippet(text) {
    return Object.assign(document.createElement("div"), { className: "hygiene-snippet muted small", textContent: text });
  }

  function showGroup(id, items, previews) {
    const details = $(id);
    details.querySelector("[data-count]").textContent = fmt(items.length);
    const list = details.querySelector(".hygiene-list");
    list.replaceChildren(
      ...items.slice(0, 200).map((item) => {
        const li = document.createElement("li");
        const indices = indicesOf(item);
        li.append(...indices.slice(0, 20).map((i) => recordButton(i, previews)));
        if (indices.length > 20) li.append(` +${fmt(indices.length - 20)}`);
        const extra = extrasOf(item);
        if (extra) li.append(Object.assign(document.createElement("span"), { className: "muted small", textContent: ` ${extra}` }));
        const text = previews[String(indices[0])] || (item && item.validation_preview);
        if (text) li.append(snippet(text));
        return li;
      }),
    );
    if (items.length > 200) list.append(Object.assign(document.createElement("li"), { className: "muted", textContent: `…and ${fmt(items.length - 200)} more.` }));
    details.open = items.length > 0 && items.length <= 20;
    const fix = $(FIX_FOR[id]);
    fix.disabled = items.length === 0;
    if (fix.disabled) fix.checked = false;
  }

  function showHygiene(r) {
    const previews = r.previews || {};
    Object.entries(GROUPS).forEach(([id, key]) => showGroup(id, Array.isArray(r[key]) ? r[key] : [], previews));
    // How many records each fix would drop, when the worker says.
    const drop = r.drop || {};
    Object.entries(GROUPS).forEach(([id, key]) => {
      const label = $(FIX_FOR[id]).closest("label").querySelector("[data-drop-count]");
      label.textContent = Array.isArray(drop[key]) ? ` (${fmt(drop[key].length)} records)` : "";
    });
    const counts = r.counts || {};
    // Per-fix record counts are shown on the fixes themselves; an empty validation set says nothing.
    const parts = Object.entries(counts)
      .filter(([k, v]) => !Object.values(GROUPS).includes(k) && !(k === "validation_records" && !v))
      .map(([k, v]) => `${k.replaceAll("_", " ")}: ${fmt(v)}`);
    $("hygiene-summary").textContent = parts.length ? parts.join(" · ") : "";
    const found = Object.values(GROUPS).some((key) => Array.isArray(r[key]) && r[key].length);
    if (!found) $("hygiene-summary").textContent = `No problems found. ${$("hygiene-summary").textContent}`.trim();
    $("hygiene-results").hidden = false;
    syncApply();
  }

  function hygieneParams() {
    return { validation_dataset_id: $("hygiene-validation").value, threshold: $("hygiene-threshold").value };
  }

  async function runHygiene() {
    const result = await analyse("hygiene", `${base}/hygiene?${query(hygieneParams())}`);
    if (result) showHygiene(result);
  }

  function syncApply() {
    $("hygiene-apply").disabled = ![...document.querySelectorAll("[data-fix]")].some((c) => c.checked && !c.disabled);
  }

  async function applyFixes() {
    const button = $("hygiene-apply");
    const body = {};
    document.querySelectorAll("[data-fix]").forEach((c) => (body[c.dataset.fix] = c.checked && !c.disabled));
    const params = hygieneParams();
    if (params.validation_dataset_id) body.validation_dataset_id = Number(params.validation_dataset_id);
    if (params.threshold) body.threshold = Number(params.threshold);
    button.disabled = true;
    button.textContent = "Making a new version…";
    try {
      const created = await Studio.fetchJSON(`${base}/fixes`, { method: "POST", body });
      window.location.assign(`/datasets/${created.id}`);
    } catch (err) {
      Studio.showError($("hygiene-error"), err.message);
      button.textContent = "Apply fixes";
      syncApply();
    }
  }

  /* ---------- wiring ---------- */

  $("stats-run").addEventListener("click", runStats);
  $("render-run").addEventListener("click", runRender);
  $("render-prev").addEventListener("click", () => step(-1));
  $("render-next").addEventListener("click", () => step(1));
  indexInput.addEventListener("keydown", (e) => {
    if (e.key === "Enter") {
      e.preventDefault();
      if (!$("render-run").disabled) runRender();
    }
  });
  $("analysis-form").addEventListener("submit", (e) => e.preventDefault());
  $("hygiene-form").addEventListener("submit", (e) => {
    e.preventDefault();
    runHygiene();
  });
  document.querySelectorAll("[data-fix]").forEach((c) => c.addEventListener("change", syncApply));
  $("hygiene-apply").addEventListener("click", applyFixes);
  $("render-prev").disabled = true;
  $("render-next").disabled = data.record_count <= 1;
})();

// Dataset page, worker-computed views: token statistics (charts), the dry run of one record, and hygiene with
// "apply fixes". Each asks the API once, which answers from its cache or queues the work; a queued or running
// analysis is then followed over SSE (progress bar, then the result). A failed one shows its error and Retry.
"use strict";

(function () {
  const $ = (id) => document.getElementById(id);
  const data = JSON.parse($("dataset-data").textContent);
  const base = `/api/datasets/${data.id}`;
  const PENDING = new Set(["queued", "running"]);
  const number = new Intl.NumberFormat();
  const fmt = (n) => (n == null || Number.isNaN(Number(n)) ? "—" : number.format(n));
  const pct = (x) => (x == null || !Number.isFinite(Number(x)) ? "—" : `${(Number(x) * 100).toFixed(1)}%`);
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

  /* ---------- asking once, then following the analysis live ---------- */

  const PHASES = {
    loading: "Loading the tokenizer",
    tokenizing: "Tokenizing",
    hashing: "Hashing",
    comparing: "Comparing with the validation set",
  };

  function panel(prefix) {
    const status = $(`${prefix}-status`);
    const error = $(`${prefix}-error`);
    const retry = $(`${prefix}-retry`);
    const box = $(`${prefix}-progress`);
    const bar = box.querySelector("progress");
    const label = box.querySelector(".progress-label");
    return {
      // A queued or running analysis: what it is doing, and how far it got when it says.
      wait(state) {
        const p = state.progress;
        const known = p && p.total != null && p.phase in PHASES && p.phase !== "loading";
        box.hidden = false;
        box.dataset.phase = (p && p.phase) || state.status;
        if (known) {
          bar.max = Math.max(1, p.total);
          bar.value = Math.min(p.done, p.total);
          label.textContent = `${PHASES[p.phase]} ${fmt(p.done)} / ${fmt(p.total)} records`;
        } else {
          bar.removeAttribute("value"); // indeterminate: nothing to count yet
          label.textContent = p ? `${PHASES[p.phase] || p.phase}…` : "";
        }
        // The status line is read out by screen readers: it changes with the state, not with every count.
        const text = state.status === "queued" ? "Waiting for the analysis worker…" : "Computing on the analysis worker…";
        if (status.textContent !== text) status.textContent = text;
      },
      start() {
        Studio.showError(error, "");
        retry.hidden = true;
        box.hidden = true;
        status.textContent = "Asking…";
      },
      done() {
        box.hidden = true;
        status.textContent = "";
      },
      fail(message) {
        box.hidden = true;
        status.textContent = "";
        Studio.showError(error, message);
        retry.hidden = false;
      },
    };
  }

  // One live analysis per panel; a newer request ends the older one's stream.
  const following = {};

  function stopFollowing(prefix) {
    const current = following[prefix];
    if (!current) return;
    delete following[prefix];
    current.source.close();
    current.resolve(null);
  }


  // Follow /api/datasets/analyses/{id}/stream until its `end`: resolves with the final state, or null when a
  // newer request took the panel over. EventSource reconnects by itself; the state it gets first resyncs.
  function follow(prefix, first, ui) {
    return new Promise((resolve) => {
      const source = new EventSource(`/api/datasets/analyses/${first.id}/stream`);
      const me = (following[prefix] = { source, resolve });
      let last = first;
      const finish = (state) => {
        if (following[prefix] === me) delete following[prefix];
        source.close();
        resolve(state);
      };
      source.addEventListener("analysis", (e) => {
        last = JSON.parse(e.data);
        if (PENDING.has(last.status)) ui.wait(last);
      });
      source.addEventListener("end", (e) => {
        const end = JSON.parse(e.data);
        if (end.status === "deleted") finish({ status: "failed", error: "The dataset was deleted." });
        else finish(last);
      });
      source.addEventListener("error", () => {
        // CLOSED means the server refused (e.g. logged out): a reconnect would not help.
        if (source.readyState === EventSource.CLOSED) finish({ status: "failed", error: "Lost the connection to the analysis." });
      });
    });
  }

  // Ask once with a POST (the answer comes from the cache, or the work is queued; a GET only reads), then follow
  // it live until done. A newer request for the same panel wins: the older one returns null, whether it was
  // asking or following.
  const runs = {};
  async function analyse(prefix, url, refresh) {
    const run = (runs[prefix] = (runs[prefix] || 0) + 1);
    const ui = panel(prefix);
    stopFollowing(prefix);
    ui.start();
    try {
      let body = await Studio.fetchJSON(refresh ? `${url}&refresh=true` : url, { method: "POST" });
      if (runs[prefix] !== run) return null;
      if (PENDING.has(body.status)) {
        ui.wait(body);
        body = await follow(prefix, body, ui);
        if (body === null || runs[prefix] !== run) return null;
      }
      if (body.status === "failed") {
        ui.fail(body.error || "The analysis failed.");
        return null;
      }
      ui.done();
      return body.result || {};
    } catch (err) {
      if (runs[prefix] === run) ui.fail(err.message);
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
    // Results computed before the worker named the cut carry only the supervised part of it.
    $("stats-cut").textContent =
      r.cut_summary ?? `${fmt(r.lost_supervised_tokens)} supervised tokens beyond max_length=${maxLength} would be cut`;
    $("stats-cut").classList.toggle("text-danger", Number(r.cut_tokens ?? r.lost_supervised_tokens) > 0);
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

  async function runStats(refresh = false) {
    const s = settings();
    const result = await analyse("stats", `${base}/stats?${query(s)}`, refresh);
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

  async function runRender(refresh = false) {
    const s = settings();
    const index = clampIndex(Number(indexInput.value));
    indexInput.value = String(index);
    $("render-prev").disabled = index <= 1;
    $("render-next").disabled = index >= data.record_count;
    const params = { base_model: s.base_model, objective: s.objective, max_length: s.max_length, index: index - 1 };
    const result = await analyse("render", `${base}/render?${query(params)}`, refresh);
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

  async function runHygiene(refresh = false) {
    const result = await analyse("hygiene", `${base}/hygiene?${query(hygieneParams())}`, refresh);
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

  $("stats-run").addEventListener("click", () => runStats());
  $("render-run").addEventListener("click", () => runRender());
  $("stats-retry").addEventListener("click", () => runStats(true));
  $("render-retry").addEventListener("click", () => runRender(true));
  $("hygiene-retry").addEventListener("click", () => runHygiene(true));
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

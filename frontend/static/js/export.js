// Job page, Export panel: package the final output or a checkpoint as a zip (adapter, merged or full model, in a
// chosen precision) and follow it. The list is live over /api/jobs/{id}/exports/stream: the whole list on
// connect (so a reload shows the same state) and on every change, then `end` once nothing is queued or
// running; starting an export opens the stream again. A finished export dispatches "studio:artifacts-changed"
// on document, so the page's artifact list can refresh.
"use strict";

(function () {
  const $ = (id) => document.getElementById(id);
  const panel = $("job-export");
  if (!panel) return;
  const jobId = panel.dataset.jobId;
  const ACTIVE = new Set(["queued", "running"]);
  const PHASES = { loading: "Loading", merging: "Merging", saving: "Saving", converting: "Converting",
    zipping: "Zipping" };
  const STEPS = { adapter: ["loading", "saving", "zipping"], merged: ["loading", "merging", "saving", "zipping"],
    model: ["loading", "saving", "zipping"],
    // A GGUF of an adapter merges it first.
    gguf: panel.dataset.adapterLabel
      ? ["loading", "merging", "converting", "zipping"]
      : ["loading", "converting", "zipping"] };
  // The adapter is named by the job's method (the page has it from the registry: LoRA, IA³, Prompt tuning ...).
  const adapter = panel.dataset.adapterLabel ? `${panel.dataset.adapterLabel} adapter` : "adapter";
  const FORMATS = { adapter, merged: "merged model", model: "full model", gguf: "GGUF" };
  const form = $("export-form");
  const source = $("export-source");
  let stream = null;
  let items = [];
  let doneIds = null; // ids of finished exports at the last render (null before the first)

  const el = Studio.el;

  /* ---------- the source picker: final output + every checkpoint ---------- */

  async function refreshSources() {
    let checkpoints;
    let job;
    try {
      [checkpoints, job] = await Promise.all([
        Studio.fetchJSON(`/api/jobs/${jobId}/checkpoints`),
        Studio.fetchJSON(`/api/jobs/${jobId}`),
      ]);
    } catch (err) {
      return;
    }
    const chosen = source.value;
    const final = source.options[0];
    final.disabled = job.status !== "succeeded";
    final.textContent = final.disabled ? "Final output (once the job succeeds)" : "Final output";
    const wanted = checkpoints.map((c) => [c.name, `${c.name} (step ${c.step}, ${Studio.formatBytes(c.size_bytes)})`]);
    const shown = [...source.options].slice(1).map((o) => [o.value, o.textContent]);
    // Rebuilt only when the checkpoints changed: replacing the options of an open select would close it.
    if (JSON.stringify(wanted) !== JSON.stringify(shown)) {
      source.replaceChildren(final, ...wanted.map(([value, textContent]) => el("option", { value, textContent })));
    }
    const enabled = [...source.options].filter((o) => !o.disabled).map((o) => o.value);
    if (enabled.includes(chosen)) {
      source.value = chosen;
    } else if (enabled.length) {
      // Without a final output yet, the newest checkpoint: the likeliest pick while a job trains.
      source.value = final.disabled ? enabled[enabled.length - 1] : "";
    }
    $("export-submit").disabled = enabled.length === 0;
    const n = wanted.length;
    $("export-source-help").textContent = n
      ? `${n} checkpoint${n > 1 ? "s" : ""}; new ones appear as training saves them.`
      : "No checkpoints yet: they appear as training saves them.";
  }

  /* ---------- the list ---------- */

  function label(e) {
    return `${e.checkpoint || "Final output"} · ${FORMATS[e.format] || e.format} · ${e.dtype}`;
  }

  function amount(p) {
    if (p.unit === "bytes") return `${Studio.formatBytes(p.done)} of ${Studio.formatBytes(p.total)}`;
    return `${p.done} of ${p.total} ${p.unit}`;
  }

  function progressBlock(e) {
    const p = e.progress;
    const bar = el("progress", { max: 1, value: 0 });
    bar.setAttribute("aria-label", `Progress of export ${label(e)}`);
    let text = "Queued: waiting for a worker";
    if (e.status === "running" && p) {
      const steps = STEPS[e.format] || [];
      const step = steps.indexOf(p.phase) + 1;
      const share = p.total > 0 ? Math.min(1, p.done / p.total) : 0;
      bar.max = p.total > 0 ? p.total : 1;
      bar.value = p.total > 0 ? Math.min(p.done, p.total) : 0;
      text = `${PHASES[p.phase] || p.phase}${step ? ` (step ${step} of ${steps.length})` : ""} · ` +
        `${Math.round(share * 100)}%${p.total > 0 ? ` · ${amount(p)}` : ""}`;
    } else if (e.status === "running") {
      text = "Starting…";
    }
    const status = el("span", { className: "progress-label export-progress-text", textContent: text });
    return el("div", { className: "export-progress" }, bar, status);
  }

  function row(e) {
    const head = el("div", { className: "export-head" }, el("strong", { textContent: label(e) }), " ",
      Studio.badge(e.status), " ", el("span", { className: "muted small" }, "asked ", Studio.timeElement(e.created_at)));
    const li = el("li", { className: "export-item" }, head);
    li.dataset.exportId = e.id;
    li.dataset.status = e.status;
    if (ACTIVE.has(e.status)) li.append(progressBlock(e));
    if (e.status === "failed") li.append(el("p", { className: "field-error export-failure", textContent: e.error || "failed" }));
    if (e.status === "done" && e.url) {
      const link = el("a", { className: "btn btn-small", href: e.url, textContent: `Download ${e.artifact_name}` });
      link.setAttribute("download", e.artifact_name);
      const took = e.started_at && e.finished_at ? (new Date(e.finished_at) - new Date(e.started_at)) / 1000 : null;
      const facts = `${Studio.formatBytes(e.size_bytes)}${took != null ? ` · took ${Studio.formatDuration(took)}` : ""}`;
      li.append(el("div", { className: "export-done" }, link, " ", el("span", { className: "muted small", textContent: facts })));
    }
    return li;
  }

  // id → { key, li }: a row is rebuilt only when its export changed, and rows that did not change stay where
  // they are, so a click on a finished export's Download is not lost to a running one's progress ticks.
  const rendered = new Map();

  function rows(list) {
    if (!items.length) return [list.querySelector("li.export-empty") || el("li", { className: "muted export-empty", textContent: "No exports yet." })];
    const lis = items.map((e) => {
      const key = JSON.stringify(e);
      const had = rendered.get(e.id);
      if (had && had.key === key) return had.li;
      const li = row(e);
      rendered.set(e.id, { key, li });
      return li;
    });
    for (const id of [...rendered.keys()]) if (!items.some((e) => e.id === id)) rendered.delete(id);
    return lis;
  }

  function render(next) {
    const before = new Map(items.map((e) => [e.id, e.status]));
    items = next;
    const list = $("export-list");
    const lis = rows(list);
    [...list.children].forEach((child) => lis.includes(child) || child.remove());
    lis.forEach((li, i) => list.children[i] !== li && list.insertBefore(li, list.children[i] || null));
    // Screen readers hear each change of status, not every tick of the bar (the list itself is not a live region).
    const changed = doneIds === null ? [] : items.filter((e) => before.get(e.id) !== e.status);
    if (changed.length) $("export-status").textContent = changed.map((e) => `Export ${label(e)}: ${e.status}`).join(". ");
    const done = new Set(items.filter((e) => e.status === "done").map((e) => e.id));
    if (doneIds && [...done].some((id) => !doneIds.has(id))) {
      document.dispatchEvent(new CustomEvent("studio:artifacts-changed", { detail: { jobId: Number(jobId) } }));
    }
    doneIds = done;
  }

  function upsert(e) {
    render([e, ...items.filter((x) => x.id !== e.id)].sort((a, b) => b.id - a.id));
  }

  /* ---------- live updates ---------- */

  function parse(e) {
    try {
      return JSON.parse(e.data);
    } catch (err) {
      return null;
    }
  }

  function connect() {
    if (stream) stream.close();
    stream = new EventSource(`/api/jobs/${jobId}/exports/stream`);
    stream.addEventListener("exports", (e) => {
      const data = parse(e);
      if (data) render(data.items);
    });
    stream.addEventListener("end", () => {
      stream.close();
      stream = null;
    });
    // On an error EventSource reconnects by itself, and the snapshot it gets resyncs the list.
  }

  /* ---------- starting an export ---------- */

  function markInvalid(field) {
    form.querySelectorAll("select").forEach((s) => s.removeAttribute("aria-invalid"));
    // A GGUF type is picked in the precision list, which is named after dtype.
    const name = field === "gguf_type" ? "dtype" : field;
    const control = name && form.querySelector(`[name="${name}"]`);
    if (control) {
      control.setAttribute("aria-invalid", "true");
      control.focus();
    }
  }

  /* ---------- the precision list: float dtypes, or GGUF types for format gguf ---------- */

  const dtype = $("export-dtype");
  const format = $("export-format");

  function showPrecisions() {
    const gguf = format.value === "gguf";
    for (const option of dtype.options) {
      const fits = option.hasAttribute("data-gguf") === gguf;
      option.hidden = !fits;
      option.disabled = !fits;
    }
    if (dtype.selectedOptions[0] && dtype.selectedOptions[0].disabled) {
      dtype.value = [...dtype.options].find((o) => !o.disabled).value;
    }
  }

  format.addEventListener("change", showPrecisions);
  showPrecisions();

  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const button = $("export-submit");
    button.disabled = true;
    Studio.showError($("export-error"), "");
    markInvalid(null);
    const body = { checkpoint: source.value || null, format: format.value };
    body[format.value === "gguf" ? "gguf_type" : "dtype"] = dtype.value;
    try {
      const created = await Studio.fetchJSON(`/api/jobs/${jobId}/exports`, { method: "POST", body });
      upsert(created);
      if (ACTIVE.has(created.status)) connect();
    } catch (err) {
      Studio.showError($("export-error"), `Could not export: ${err.message}`);
      const detail = err.body && err.body.detail;
      markInvalid((err.body && err.body.field) || (Array.isArray(detail) ? Studio.fieldFromLoc(detail[0].loc) : null));
    } finally {
      button.disabled = false;
    }
  });

  source.addEventListener("focus", refreshSources); // checkpoints saved since the page loaded
  // job.js: the run ended, so the final output may be ready and rotated checkpoints gone.
  document.addEventListener("studio:job-ended", refreshSources);
  refreshSources();
  connect();
})();

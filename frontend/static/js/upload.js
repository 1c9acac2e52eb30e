// Dataset upload in two steps. 1: choose or drop a file; it is inspected (layout, shape, first rows, problems)
// and the user may change how it is read. 2: "Upload" sends it in resumable chunks (chunked_upload.js) with a
// progress bar.
"use strict";

(function () {
  const $ = (id) => document.getElementById(id);
  const form = $("upload-form");
  const input = $("upload-file");
  const drop = $("upload-drop");
  const nameInput = $("upload-name");
  const fileLabel = $("upload-filename");
  const status = $("upload-status");
  const progress = $("upload-progress");
  const percent = $("upload-percent");
  const rate = $("upload-rate");
  const actions = $("upload-actions");
  const submit = $("upload-submit");
  const cancel = $("upload-cancel");
  const panel = $("inspect");
  const shapeSelect = $("inspect-shape");
  const splitField = $("inspect-text-split-field");
  const splitSelect = $("inspect-text-split");
  const quotingField = $("inspect-quoting-field");
  const quotingSelect = $("inspect-quoting");

  const WHOLE_INSPECT_LIMIT = 50 * 1000 * 1000; // bigger files: only their head is inspected
  const HEAD_BYTES = 4 * 1024 * 1024;
  const HEAD_RECORDS = 1000; // a head may end mid-record: stop reading well before that
  const SHAPE_FIELDS = {
    text: ["text"],
    prompt_completion: ["prompt", "completion"],
    messages: ["messages"],
    preference: ["prompt", "chosen", "rejected"],
    unpaired_preference: ["prompt", "completion", "label"],
    classification: ["text", "label"],
  };
  const TEXT_FILE = /\.(txt|md)(\.gz)?$/i;
  const TABLE_FILE = /\.(csv|tsv)(\.gz)?$/i;
  const LINE_FILE = /\.(jsonl|csv|tsv|txt|md)$/i; // a head cut at a newline is still well-formed

  let file = null;
  let inspectSeq = 0;
  let inspectTimer = null;
  let splitTouched = false;
  let found = null; // the last inspection: its effective options go with the upload
  let busy = false;
  let sending = null; // the ChunkedUpload in flight

  /* ---------- small helpers ---------- */

  function setStatus(text) {
    $("inspect-status").textContent = text || "";
  }

  function setProgress(fraction) {
    const pct = Math.min(100, Math.round(fraction * 100));
    progress.value = pct;
    percent.textContent = `${pct}%`;
  }

  function cell(text) {
    const td = document.createElement("td");
    const div = document.createElement("div");
    div.className = "clip";
    div.textContent = text;
    td.append(div);
    return td;
  }

  function describe(e) {
    const where = e.line != null ? `line ${e.line}: ` : e.row != null ? `row ${e.row}: ` : "";
    const field = e.field ? `field '${e.field}': ` : "";
    return `${where}${field}${e.message || e.problem || e.msg || ""}`;
  }

  /* ---------- errors (inspection or server refusal) ---------- */

  function clearErrors() {
    $("upload-error").hidden = true;
    $("upload-error-summary").textContent = "";
    $("upload-error-table").tBodies[0].replaceChildren();
    $("upload-error-table-wrap").hidden = true;
    $("upload-error-more").hidden = true;
  }

  function showErrors(summary, errors = [], total = errors.length) {
    clearErrors();
    if (!summary && !errors.length) return;
    if (errors.length && !/\b(line|row) \d+/.test(summary)) summary = `${summary}\n${describe(errors[0])}`;
    $("upload-error-summary").textContent = summary;
    const body = $("upload-error-table").tBodies[0];
    errors.forEach((e) => {
      const tr = document.createElement("tr");
      const line = document.createElement("td");
      line.className = "num";
      line.textContent = e.line ?? e.row ?? "";
      const field = document.createElement("td");
      field.textContent = e.field || "";
      const message = document.createElement("td");
      message.textContent = e.message || e.problem || e.msg || "";
      tr.append(line, field, message);
      body.append(tr);
    });
    $("upload-error-table-wrap").hidden = errors.length === 0;
    const more = $("upload-error-more");
    more.hidden = total <= errors.length;
    more.textContent = `…and ${(total - errors.length).toLocaleString()} more.`;
    $("upload-error").hidden = false;
  }

  function showApiError(err) {
    const body = err.body && typeof err.body === "object" ? err.body : {};
    const errors = Array.isArray(body.errors) ? body.errors : [];
    showErrors(err.message, errors, body.error_count || errors.length);
  }

  /* ---------- step 1: inspect ---------- */

  function options() {
    const opts = {};
    if (shapeSelect.value) opts.shape = shapeSelect.value;
    if (!splitField.hidden && splitTouched) opts.text_split = splitSelect.value;
    if (!quotingField.hidden && quotingSelect.value) opts.quoting = quotingSelect.value;
    const columns = {};
    document.querySelectorAll("[data-column-for]").forEach((sel) => {
      if (sel.value) columns[sel.dataset.columnFor] = sel.value;
    });
    if (Object.keys(columns).length) opts.columns = columns;
    return opts;
  }

  async function headOf(f) {
    if (f.size <= WHOLE_INSPECT_LIMIT) return { blob: f, partial: false };
    let blob = f.slice(0, HEAD_BYTES);
    if (LINE_FILE.test(f.name)) {
      const bytes = new Uint8Array(await blob.arrayBuffer());
      const cut = bytes.lastIndexOf(10);
      if (cut > 0) blob = blob.slice(0, cut + 1);
    }
    return { blob, partial: true };
  }

  async function inspect() {
    const seq = ++inspectSeq;
    const current = file;
    found = null;
    submit.disabled = true;
    setStatus("Inspecting…");
    panel.setAttribute("aria-busy", "true");
    if (/\.parquet$/i.test(current.name) && current.size > WHOLE_INSPECT_LIMIT) {
      // A Parquet file's schema sits at its end: a head says nothing. The server checks it on upload.
      setStatus("Large Parquet file: it is checked on upload.");
      panel.removeAttribute("aria-busy");
      submit.disabled = false;
      return;
    }
    const head = await headOf(current);
    const data = new FormData();
    data.append("file", head.blob, current.name);
    if (head.partial) data.append("max_records", String(HEAD_RECORDS));
    const opts = options();
    if (Object.keys(opts).length) data.append("options", JSON.stringify(opts));
    try {
      const answer = await Studio.fetchJSON("/api/datasets/inspect", { method: "POST", body: data });
      if (seq !== inspectSeq) return;
      found = answer;
      showDetection(answer, head);
    } catch (err) {
      if (seq !== inspectSeq) return;
      if (err.status === 404 || err.status === 405 || err.status === 0) {
        setStatus("Could not inspect the file here; it is checked on upload.");
        submit.disabled = false;
      } else {
        setStatus("");
        showApiError(err);
      }
    } finally {
      if (seq === inspectSeq) panel.removeAttribute("aria-busy");
    }
  }

  function scheduleInspect() {
    submit.disabled = true; // the upload waits for the inspection of what it will send
    clearTimeout(inspectTimer);
    inspectTimer = setTimeout(() => file && !busy && inspect(), 250);
  }

  function showDetection(answer, head) {
    const layout = answer.layout || answer.format || "—";
    const shape = answer.shape || "";
    $("inspect-layout").textContent = layout;
    $("inspect-shape-detected").textContent = shape ? shape.replaceAll("_", " / ") : "—";
    const confidence = Number(answer.confidence);
    $("inspect-confidence").textContent = Number.isFinite(confidence) ? `${Math.round(confidence * 100)}%` : "—";
    $("inspect-confidence").dataset.confidence = Number.isFinite(confidence) ? String(confidence) : "";
    const records = Number(answer.record_count);
    const counted = Number.isFinite(records) ? `${records.toLocaleString()} record${records === 1 ? "" : "s"}` : "";
    $("inspect-scope").textContent =
      head.partial || answer.complete === false
        ? `first ${counted || Studio.formatBytes(head.blob.size)} of ${Studio.formatBytes(file.size)}`
        : `whole file: ${counted}`;
    const columns = Array.isArray(answer.columns) ? answer.columns : [];
    $("inspect-columns").textContent = columns.length ? columns.join(", ") : "—";
    splitField.hidden = !(TEXT_FILE.test(file.name) || layout === "text");
    quotingField.hidden = !TABLE_FILE.test(file.name);
    const effective = answer.options || {};
    if (!splitTouched && effective.text_split) splitSelect.value = effective.text_split;
    renderNotes(Array.isArray(answer.notes) ? answer.notes : []);
    renderColumnMap(shapeSelect.value || shape, columns, effective.columns);
    renderWarnings(answer.warnings || [], answer.warning_count || 0);
    renderRows(answer.table || { columns: [], rows: [] });
    const errors = Array.isArray(answer.errors) ? answer.errors : [];
    const total = answer.error_count || errors.length;
    if (total) {
      const scope = head.partial ? "in the first part of" : "in";
      showErrors(`${total.toLocaleString()} problem${total === 1 ? "" : "s"} ${scope} ${file.name}`, errors, total);
      setStatus("Fix the file or change how it is read.");
    } else {
      clearErrors();
      const doubt = confidence < 1 && Array.isArray(answer.notes) && answer.notes.length ? ` ${answer.notes.at(-1)}` : "";
      if (confidence < 0.6) setStatus(`Low confidence: check how it is read.${doubt}`);
      else setStatus(doubt ? `Ready to upload, but:${doubt}` : "Ready to upload.");
    }
    submit.disabled = total > 0;
  }

  function renderColumnMap(shape, columns, detected) {
    const wrap = $("inspect-column-map");
    const fields = SHAPE_FIELDS[shape] || [];
    const holder = $("inspect-column-fields");
    const previous = {};
    holder.querySelectorAll("[data-column-for]").forEach((sel) => (previous[sel.dataset.columnFor] = sel.value));
    holder.replaceChildren();
    wrap.hidden = !columns.length || !fields.length;
    if (wrap.hidden) return;
    fields.forEach((field) => {
      const div = document.createElement("div");
      div.className = "field";
      const label = document.createElement("label");
      label.htmlFor = `column-map-${field}`;
      label.textContent = field;
      const select = document.createElement("select");
      select.id = `column-map-${field}`;
      select.dataset.columnFor = field;
      select.add(new Option("automatic", ""));
      columns.forEach((c) => select.add(new Option(c, c)));
      const keep = previous[field] || (detected && detected[field]) || "";
      if (columns.includes(keep)) select.value = keep;
      select.addEventListener("change", scheduleInspect);
      div.append(label, select);
      holder.append(div);
    });
  }

  // How detection decided (a text file's split, say) and why the confidence is below 100%.
  function renderNotes(notes) {
    $("inspect-notes").replaceChildren(...notes.map((n) => Object.assign(document.createElement("li"), { textContent: n })));
    $("inspect-notes-row").hidden = notes.length === 0;
  }

  function renderWarnings(warnings, total) {
    const list = $("inspect-warning-list");
    list.replaceChildren();
    warnings.forEach((w) => {
      const li = document.createElement("li");
      li.textContent = typeof w === "string" ? w : describe(w);
      list.append(li);
    });
    if (total > warnings.length) {
      const li = document.createElement("li");
      li.textContent = `…and ${(total - warnings.length).toLocaleString()} more.`;
      list.append(li);
    }
    $("inspect-warnings").hidden = warnings.length === 0;
  }

  // The server renders the cells (the dataset page's own text): every column any record has, nested values as
  // compact JSON, conversations as "role: content" lines.
  function renderRows({ columns, rows }) {
    const table = $("inspect-rows");
    const head = document.createElement("tr");
    ["#", ...columns].forEach((k) => {
      const th = document.createElement("th");
      th.textContent = k;
      if (k === "#") th.className = "num";
      head.append(th);
    });
    table.tHead.replaceChildren(head);
    table.tBodies[0].replaceChildren(
      ...rows.slice(0, 10).map((row, i) => {
        const tr = document.createElement("tr");
        const n = document.createElement("td");
        n.className = "num muted";
        n.textContent = String(i + 1);
        tr.append(n, ...row.map(cell));
        return tr;
      }),
    );
    $("inspect-preview").hidden = rows.length === 0;
  }

  function choose(f) {
    if (busy || !f) return;
    file = f;
    clearErrors();
    shapeSelect.value = "";
    splitSelect.value = "paragraph";
    splitTouched = false;
    quotingSelect.value = "";
    $("inspect-column-fields").replaceChildren();
    fileLabel.textContent = `${f.name} (${Studio.formatBytes(f.size)})`;
    panel.hidden = false;
    actions.hidden = false;
    status.hidden = true;
    inspect();
  }

  function reset() {
    inspectSeq += 1;
    file = null;
    input.value = "";
    fileLabel.textContent = "";
    panel.hidden = true;
    actions.hidden = true;
    status.hidden = true;
    clearErrors();
  }

  /* ---------- step 2: chunked, resumable upload (chunked_upload.js) ---------- */

  function setBusy(on) {
    busy = on;
    drop.classList.toggle("is-busy", on);
    if (on) drop.setAttribute("aria-busy", "true");
    else drop.removeAttribute("aria-busy");
    submit.disabled = on;
    panel.querySelectorAll("select").forEach((s) => (s.disabled = on));
    nameInput.disabled = on;
    status.hidden = !on;
  }

  async function upload() {
    if (busy || !file) return;
    clearErrors();
    setBusy(true);
    setProgress(0);
    rate.textContent = "";
    // What the inspection settled on (layout, columns, ...), with the user's choices on top.
    const opts = { ...((found && found.options) || {}), ...options() };
    const transfer = (sending = new ChunkedUpload.Upload(file, {
      name: nameInput.value.trim(),
      options: opts,
      onProgress: setProgress,
      onNote: (text) => (rate.textContent = text),
    }));
    try {
      const dataset = await transfer.run();
      window.location.assign(`/datasets/${dataset.id}`);
    } catch (err) {
      setBusy(false);
      if (transfer.cancelled) return;
      showApiError(err);
      submit.disabled = false;
    }
  }

  async function abandon() {
    if (busy && sending) await sending.abort();
    setBusy(false);
    reset();
  }

  /* ---------- wiring ---------- */

  input.addEventListener("change", () => choose(input.files[0]));
  form.addEventListener("submit", (e) => {
    e.preventDefault();
    upload();
  });
  cancel.addEventListener("click", abandon);
  shapeSelect.addEventListener("change", scheduleInspect);
  quotingSelect.addEventListener("change", scheduleInspect);
  splitSelect.addEventListener("change", () => {
    splitTouched = true;
    scheduleInspect();
  });

  ["dragenter", "dragover"].forEach((type) =>
    drop.addEventListener(type, (e) => {
      e.preventDefault();
      e.dataTransfer.dropEffect = "copy";
      drop.classList.add("is-dragover");
    }),
  );
  ["dragleave", "dragend"].forEach((type) =>
    drop.addEventListener(type, (e) => {
      if (!drop.contains(e.relatedTarget)) drop.classList.remove("is-dragover");
    }),
  );
  drop.addEventListener("drop", (e) => {
    e.preventDefault();
    drop.classList.remove("is-dragover");
    const files = e.dataTransfer.files;
    if (files.length > 1) {
      showErrors("Drop one file at a time.");
      return;
    }
    choose(files[0]);
  });
  // A file dropped beside the zone would make the browser navigate away to it.
  window.addEventListener("dragover", (e) => e.preventDefault());
  window.addEventListener("drop", (e) => e.preventDefault());
})();

// Models page: upload a base model (a zip of a Hugging Face directory, or a .gguf) in resumable chunks with a
// progress bar, import one from the Hub, and watch imports finish. The list is live over SSE
// (/api/models/stream): a snapshot of every row on connect, then a `model` event per row that appears or
// changes (import progress included) and `removed` per row gone. EventSource reconnects by itself after an
// error, and the snapshot it gets resyncs every row.
"use strict";

(function () {
  const $ = (id) => document.getElementById(id);
  const ACCEPTED = /\.(zip|gguf)$/i;

  // A chunked upload whose start and finish are the models API's (the chunks go to /api/uploads/{id} as for
  // datasets). It is not resumed after a reload: no pending id is kept.
  class ModelUpload extends ChunkedUpload.Upload {
    async run() {
      const body = { filename: this.file.name, size: this.file.size, name: this.name };
      const started = await Studio.fetchJSON("/api/models/uploads", { method: "POST", body });
      this.id = started.id;
      await this.sendChunks(0, started.chunk_size);
      this.onNote("checking the files…");
      const form = new FormData();
      form.append("upload_id", this.id);
      if (this.name) form.append("name", this.name);
      const model = await Studio.fetchJSON("/api/models", { method: "POST", body: form });
      this.onProgress(1);
      return model;
    }

    async abort() {
      this.cancelled = true;
      if (this.xhr) this.xhr.abort();
      if (!this.id) return;
      try {
        await Studio.fetchJSON(`/api/uploads/${this.id}`, { method: "DELETE" });
      } catch (err) {
        /* already gone */
      }
    }
  }

  /* ---------- the list, live over /api/models/stream ---------- */

  const section = $("models-list");
  const table = $("model-table");
  const tbody = table.querySelector("tbody");
  const isAdmin = section.dataset.admin === "true";

  const el = Studio.el;

  // As the server's `params` macro: 1.2B, 135.0M, 4.5K.
  function params(n) {
    if (!n) return "—";
    if (n >= 1e9) return `${(n / 1e9).toFixed(1)}B`;
    if (n >= 1e5) return `${(n / 1e6).toFixed(1)}M`;
    if (n >= 1e3) return `${(n / 1e3).toFixed(1)}K`;
    return String(n);
  }

  function titleCell(m) {
    const cell = el("td", { className: "cell-title" }, el("a", { href: `/models/${m.id}`, textContent: m.name }));
    if (m.shared) cell.append(" ", el("span", { className: "tag", title: "Visible to every user", textContent: "shared" }));
    if (m.trust_remote_code) {
      const title = "The model's own Python code runs when it is loaded";
      cell.append(" ", el("span", { className: "tag tag-warn", title, textContent: "remote code" }));
    }
    if (m.status === "failed" && m.error) cell.append(el("p", { className: "field-error model-error", textContent: m.error }));
    return cell;
  }

  function sourceCell(m) {
    const cell = el("td");
    if (m.source === "job" && m.job_id) {
      cell.append("produced by ", el("a", { href: `/jobs/${m.job_id}`, textContent: `job ${m.job_id}` }));
    } else if (m.source === "hub") {
      const pinned = m.commit || m.revision || "";
      cell.append("hub ", el("code", { className: "hash", title: `${m.hub_id}@${pinned}`, textContent: `@${pinned.slice(0, 12)}` }));
    } else {
      cell.textContent = m.source;
    }
    return cell;
  }

  // A running import: stages count whole, and the bytes or tensors done move the bar inside one.
  function importProgress(p) {
    const bar = el("progress", { max: p ? p.steps : 1, value: 0 });
    bar.setAttribute("aria-label", "Import progress");
    const label = el("span", { className: "progress-label", textContent: "waiting for a worker" });
    if (p) {
      const within = p.total && p.done != null ? Math.min(1, p.done / p.total) : 0;
      bar.value = p.step - 1 + within;
      const size = (n) => (p.unit === "bytes" ? Studio.formatBytes(n) : Number(n).toLocaleString());
      const count = p.total && p.done != null ? ` · ${size(p.done)} of ${size(p.total)}` : "";
      label.textContent = `${p.stage} (${p.step} of ${p.steps})${count}`;
    }
    return el("div", { className: "progress-cell model-import" }, bar, label);
  }

  function statusCell(m) {
    const cell = el("td", {}, Studio.badge(m.status));
    if (m.status === "importing") cell.append(importProgress(m.progress));
    return cell;
  }

  function usedByCell(m) {
    const cell = el("td", { className: "used-by" });
    cell.dataset.jobCount = String(m.used_by_count);
    m.used_by.slice(0, 5).forEach((j, i) => {
      if (i) cell.append(", ");
      cell.append(el("a", { href: `/jobs/${j.id}`, title: `${j.kind} · ${j.status}`, textContent: j.name }));
    });
    if (m.used_by_count > 5) cell.append(" ", el("span", { className: "muted small", textContent: `+${m.used_by_count - 5} more` }));
    if (!m.used_by_count) cell.append(el("span", { className: "muted", textContent: "no jobs" }));
    return cell;
  }

  function actionsCell(m) {
    const cell = el("td", { className: "actions" });
    if (m.status === "ready") {
      const href = `/jobs/new?kind=finetune&base_model=${m.id}`;
      cell.append(el("a", { className: "btn btn-small", href, textContent: "Fine-tune" }));
    }
    if (isAdmin && m.status === "ready") {
      const box = el("input", { type: "checkbox", checked: m.trust_remote_code });
      box.dataset.action = "trust";
      cell.append(" ", el("label", { className: "small trust-toggle" }, box, " trust remote code"));
    }
    if (m.editable && m.source !== "job") {
      const remove = el("button", { type: "button", className: "btn btn-small btn-danger", textContent: "Remove" });
      remove.dataset.action = "delete";
      remove.setAttribute("aria-label", `Remove ${m.name}`);
      cell.append(" ", remove);
    }
    return cell;
  }

  function row(m) {
    const tr = el("tr", { id: `model-${m.id}` });
    tr.dataset.modelId = String(m.id);
    tr.dataset.status = m.status;
    const parameters = el("td", { className: "num", title: `${Number(m.parameters).toLocaleString()} parameters`, textContent: params(m.parameters) });
    const cells = [
      [titleCell(m), ""],
      [sourceCell(m), "Source"],
      [statusCell(m), "Status"],
      [el("td", { textContent: m.architecture || "—" }), "Architecture"],
      [parameters, "Parameters"],
      [el("td", {}, Studio.timeElement(m.created_at)), "Created"],
      [usedByCell(m), "Used by"],
      [actionsCell(m), ""],
    ];
    cells.forEach(([cell, label]) => {
      if (label) cell.dataset.label = label;
      tr.append(cell);
    });
    return tr;
  }

  // Newest first, as the server lists them.
  function place(tr) {
    const id = Number(tr.dataset.modelId);
    const old = tbody.querySelector(`tr[data-model-id="${id}"]`);
    if (old) {
      old.replaceWith(tr);
    } else {
      const next = [...tbody.rows].find((r) => Number(r.dataset.modelId) < id);
      tbody.insertBefore(tr, next || null);
    }
  }

  function showEmpty() {
    const any = tbody.rows.length > 0;
    table.closest(".table-wrap").hidden = !any;
    $("models-empty").hidden = any;
  }

  function follow() {
    const source = new EventSource("/api/models/stream");
    // The snapshot (on connect and after every reconnect) is the whole truth: rows not in it are gone.
    source.addEventListener("models", (e) => {
      tbody.replaceChildren(...JSON.parse(e.data).items.map(row));
      showEmpty();
    });
    source.addEventListener("model", (e) => {
      place(row(JSON.parse(e.data)));
      showEmpty();
    });
    source.addEventListener("removed", (e) => {
      const gone = tbody.querySelector(`tr[data-model-id="${JSON.parse(e.data).id}"]`);
      if (gone) gone.remove();
      showEmpty();
    });
    table.dataset.live = "connecting";
    source.addEventListener("open", () => (table.dataset.live = "open"));
    source.addEventListener("error", () => (table.dataset.live = "reconnecting"));
  }

  // Deletes and trust changes need no refresh: the stream brings the new row (or its removal).
  async function rowAction(event) {
    const target = event.target;
    const action = target.dataset && target.dataset.action;
    const tr = target.closest("tr[data-model-id]");
    if (!action || !tr) return;
    const id = tr.dataset.modelId;
    try {
      if (action === "delete") {
        const name = tr.querySelector(".cell-title").firstChild.textContent.trim();
        if (!window.confirm(`Remove the model "${name}"?`)) return;
        await Studio.fetchJSON(`/api/models/${id}`, { method: "DELETE" });
      } else if (action === "trust") {
        const body = { trust_remote_code: target.checked };
        await Studio.fetchJSON(`/api/models/${id}`, { method: "PATCH", body });
      }
    } catch (err) {
      if (action === "trust") target.checked = !target.checked;
      window.alert(err.message);
    }
  }

  /* ---------- upload ---------- */

  const form = $("model-upload-form");
  const input = $("model-upload-file");
  const drop = $("model-upload-drop");
  const submit = $("model-upload-submit");
  const cancel = $("model-upload-cancel");
  const status = $("model-upload-status");
  const bar = $("model-upload-progress");
  const percent = $("model-upload-percent");
  const note = $("model-upload-note");
  const uploadError = $("model-upload-error");
  let file = null;
  let sending = null;

  function setProgress(fraction) {
    const value = Math.round(Math.min(1, Math.max(0, fraction)) * 100);
    bar.value = value;
    percent.textContent = `${value}%`;
  }

  function choose(f) {
    if (sending || !f) return;
    Studio.showError(uploadError, "");
    if (!ACCEPTED.test(f.name)) {
      file = null;
      submit.disabled = true;
      $("model-upload-filename").textContent = "";
      Studio.showError(uploadError, `${f.name}: upload a .zip of a Hugging Face model directory, or a .gguf file.`);
      return;
    }
    file = f;
    $("model-upload-filename").textContent = `${f.name} (${Studio.formatBytes(f.size)})`;
    submit.disabled = false;
  }

  function setBusy(on) {
    drop.classList.toggle("is-busy", on);
    submit.disabled = on || !file;
    cancel.hidden = !on;
    status.hidden = !on;
    $("model-upload-name").disabled = on;
  }

  async function upload() {
    if (sending || !file) return;
    Studio.showError(uploadError, "");
    setProgress(0);
    note.textContent = "";
    const transfer = (sending = new ModelUpload(file, {
      name: $("model-upload-name").value.trim(),
      onProgress: setProgress,
      onNote: (text) => (note.textContent = text),
    }));
    setBusy(true);
    try {
      await transfer.run();
      form.reset();
      file = null;
      $("model-upload-filename").textContent = "";
    } catch (err) {
      if (!transfer.cancelled) Studio.showError(uploadError, err.message);
    } finally {
      sending = null;
      setBusy(false);
    }
  }

  input.addEventListener("change", () => choose(input.files[0]));
  form.addEventListener("submit", (e) => {
    e.preventDefault();
    upload();
  });
  cancel.addEventListener("click", () => sending && sending.abort());
  ["dragenter", "dragover"].forEach((type) =>
    drop.addEventListener(type, (e) => {
      e.preventDefault();
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
    choose(e.dataTransfer.files[0]);
  });
  // A file dropped beside the zone would make the browser navigate away to it.
  window.addEventListener("dragover", (e) => e.preventDefault());
  window.addEventListener("drop", (e) => e.preventDefault());

  /* ---------- hub import ---------- */

  const hubForm = $("hub-import-form");
  hubForm.addEventListener("submit", async (e) => {
    e.preventDefault();
    const hubError = $("hub-import-error");
    Studio.showError(hubError, "");
    if (!hubForm.reportValidity()) return;
    const body = {
      hub_id: $("hub-id").value.trim(),
      revision: $("hub-revision").value.trim(),
      name: $("hub-name").value.trim(),
    };
    const button = $("hub-import-submit");
    button.disabled = true;
    try {
      await Studio.fetchJSON("/api/models/import", { method: "POST", body });
      hubForm.reset();
    } catch (err) {
      Studio.showError(hubError, err.message);
    } finally {
      button.disabled = false;
    }
  });

  // Row buttons live in rows the stream replaces: listen above them.
  document.querySelector("main").addEventListener("click", (e) => {
    if (e.target.dataset && e.target.dataset.action === "delete") rowAction(e);
  });
  document.querySelector("main").addEventListener("change", (e) => {
    if (e.target.dataset && e.target.dataset.action === "trust") rowAction(e);
  });
  follow();
})();

// Models page: upload a base model (a zip of a Hugging Face directory, or a .gguf) in resumable chunks with a
// progress bar, import one from the Hub, and watch imports finish. The list is the server's own rendering,
// fetched again every 2 s while an import runs (one template for both, so they never disagree).
"use strict";

(function () {
  const $ = (id) => document.getElementById(id);
  const ACCEPTED = /\.(zip|gguf)$/i;
  const POLL_MS = 2000;

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

  /* ---------- the list ---------- */

  let pollTimer = null;

  async function refresh() {
    const html = await (await fetch("/models", { credentials: "same-origin" })).text();
    const fresh = new DOMParser().parseFromString(html, "text/html").getElementById("models-list");
    const list = $("models-list");
    if (!fresh || !list) return;
    list.replaceWith(fresh);
    Studio.formatTimes(fresh);
    schedulePoll();
  }

  function schedulePoll() {
    clearTimeout(pollTimer);
    if (document.querySelector('#models-list tr[data-status="importing"]')) {
      pollTimer = setTimeout(() => refresh().catch(schedulePoll), POLL_MS);
    }
  }

  async function rowAction(event) {
    const target = event.target;
    const action = target.dataset && target.dataset.action;
    const row = target.closest("tr[data-model-id]");
    if (!action || !row) return;
    const id = row.dataset.modelId;
    try {
      if (action === "delete") {
        const name = row.querySelector(".cell-title").firstChild.textContent.trim();
        if (!window.confirm(`Remove the model "${name}"?`)) return;
        await Studio.fetchJSON(`/api/models/${id}`, { method: "DELETE" });
      } else if (action === "trust") {
        const body = { trust_remote_code: target.checked };
        await Studio.fetchJSON(`/api/models/${id}`, { method: "PATCH", body });
      }
      await refresh();
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
      await refresh();
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
      await refresh();
    } catch (err) {
      Studio.showError(hubError, err.message);
    } finally {
      button.disabled = false;
    }
  });

  // Row buttons live in the list, which is replaced on refresh: listen above it.
  document.querySelector("main").addEventListener("click", (e) => {
    if (e.target.dataset && e.target.dataset.action === "delete") rowAction(e);
  });
  document.querySelector("main").addEventListener("change", (e) => {
    if (e.target.dataset && e.target.dataset.action === "trust") rowAction(e);
  });
  schedulePoll();
})();

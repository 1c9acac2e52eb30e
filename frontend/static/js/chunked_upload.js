// Resumable chunked upload over /api/uploads: start (or resume) an upload, PUT the file in chunks with
// Content-Range, and complete it. A dropped connection resumes from the server's offset (GET /api/uploads/{id});
// the same file chosen again after a reload continues where it stopped (the upload id is kept in localStorage).
"use strict";

(function () {
  const DEFAULT_CHUNK = 8 * 1024 * 1024;
  const RETRIES = 8;
  const PENDING_KEY = "studio.pendingUpload";

  const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));
  const fileKey = (f) => `${f.name}|${f.size}|${f.lastModified}`;
  // Transient: the network, a server restart, a concurrent chunk. Anything else is the client's problem.
  const transient = (err) => err.status === 0 || err.status >= 500 || err.status === 408 || err.status === 409;

  function forgetPending() {
    localStorage.removeItem(PENDING_KEY);
  }

  class Upload {
    // onProgress(fraction 0..1) follows the bytes; onNote(text) hears the rate and retries.
    constructor(file, { name = "", options = {}, onProgress = () => {}, onNote = () => {} } = {}) {
      Object.assign(this, { file, name, options, onProgress, onNote });
      this.id = null;
      this.xhr = null;
      this.cancelled = false;
    }

    // Upload and validate; resolves to the stored dataset, rejects with a Studio.ApiError.
    async run() {
      let completing = false;
      try {
        const started = await this.startOrResume();
        this.id = started.id;
        this.onProgress(started.received_bytes / Math.max(1, this.file.size));
        await this.sendChunks(started.received_bytes, started.chunk_size || DEFAULT_CHUNK);
        this.onNote("validating…");
        completing = true;
        const dataset = await Studio.fetchJSON(`/api/uploads/${this.id}/complete`, { method: "POST" });
        forgetPending();
        this.onProgress(1);
        return dataset;
      } catch (err) {
        // A refused file ends its upload on the server; so does a 404 (it expired).
        if (completing || err.status === 404) forgetPending();
        throw err;
      }
    }

    async abort() {
      this.cancelled = true;
      if (this.xhr) this.xhr.abort();
      forgetPending();
      if (!this.id) return;
      try {
        await Studio.fetchJSON(`/api/uploads/${this.id}`, { method: "DELETE" });
      } catch (err) {
        /* already gone */
      }
    }

    async startOrResume() {
      const key = JSON.stringify({ file: fileKey(this.file), opts: this.options, name: this.name });
      const saved = JSON.parse(localStorage.getItem(PENDING_KEY) || "null");
      if (saved && saved.key === key) {
        try {
          return await Studio.fetchJSON(`/api/uploads/${saved.id}`);
        } catch (err) {
          forgetPending(); // expired or completed: start again
        }
      }
      const body = { filename: this.file.name, size: this.file.size, name: this.name, options: this.options };
      const started = await Studio.fetchJSON("/api/uploads", { method: "POST", body });
      localStorage.setItem(PENDING_KEY, JSON.stringify({ key, id: started.id }));
      return started;
    }

    putChunk(start, end) {
      const size = this.file.size;
      return new Promise((resolve, reject) => {
        const xhr = (this.xhr = new XMLHttpRequest());
        xhr.open("PUT", `/api/uploads/${this.id}`);
        xhr.setRequestHeader("Content-Range", `bytes ${start}-${end - 1}/${size}`);
        xhr.setRequestHeader("Content-Type", "application/octet-stream");
        xhr.setRequestHeader("Accept", "application/json");
        xhr.setRequestHeader("X-CSRF-Token", Studio.csrfToken());
        xhr.upload.addEventListener("progress", (e) => this.onProgress((start + e.loaded) / size));
        xhr.addEventListener("load", () => {
          let body = xhr.responseText;
          try {
            body = JSON.parse(xhr.responseText);
          } catch (err) {
            /* keep the text */
          }
          if (xhr.status >= 200 && xhr.status < 300) resolve(body);
          else reject(new Studio.ApiError(xhr.status, body));
        });
        xhr.addEventListener("error", () => reject(new Studio.ApiError(0, { detail: "the connection dropped" })));
        xhr.addEventListener("abort", () => reject(new Studio.ApiError(0, { detail: "Upload cancelled." })));
        xhr.send(this.file.slice(start, end));
      });
    }

    async sendChunks(offset, chunkSize) {
      const size = this.file.size;
      const first = offset;
      const t0 = performance.now();
      let failures = 0;
      while (offset < size) {
        const end = Math.min(offset + chunkSize, size);
        try {
          offset = (await this.putChunk(offset, end)).received_bytes;
          failures = 0;
          this.onProgress(offset / size);
          const mbps = (offset - first) / 1e6 / ((performance.now() - t0) / 1000);
          this.onNote(Number.isFinite(mbps) ? `${mbps.toFixed(1)} MB/s` : "");
        } catch (err) {
          if (this.cancelled || !transient(err)) throw err;
          if (err.status === 409 && Number.isInteger(err.body && err.body.received_bytes)) {
            offset = err.body.received_bytes; // the server has more (or less) than we thought: go on from there
            continue;
          }
          failures += 1;
          if (failures > RETRIES) throw err;
          const wait = Math.min(10, 2 ** (failures - 1));
          this.onNote(`connection lost; resuming in ${wait}s (attempt ${failures} of ${RETRIES})`);
          await sleep(wait * 1000);
          try {
            offset = (await Studio.fetchJSON(`/api/uploads/${this.id}`)).received_bytes;
          } catch (again) {
            if (!transient(again)) throw again;
          }
        }
      }
    }
  }

  window.ChunkedUpload = { Upload, forgetPending };
})();

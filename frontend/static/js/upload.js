// Dataset upload: file input or drag-and-drop, XHR so the progress bar can follow the upload.
"use strict";

(function () {
  const form = document.getElementById("upload-form");
  const input = document.getElementById("upload-file");
  const drop = document.getElementById("upload-drop");
  const nameInput = document.getElementById("upload-name");
  const status = document.getElementById("upload-status");
  const progress = document.getElementById("upload-progress");
  const percent = document.getElementById("upload-percent");
  const errorBox = document.getElementById("upload-error");
  const fileLabel = document.getElementById("upload-filename");
  let busy = false;

  function setProgress(fraction) {
    const pct = Math.round(fraction * 100);
    progress.value = pct;
    percent.textContent = `${pct}%`;
  }

  function finish(message) {
    busy = false;
    drop.classList.remove("is-busy");
    drop.removeAttribute("aria-busy");
    status.hidden = true;
    input.value = "";
    Studio.showError(errorBox, message);
  }

  function upload(file) {
    if (busy || !file) return;
    busy = true;
    Studio.showError(errorBox, "");
    fileLabel.textContent = `${file.name} (${Studio.formatBytes(file.size)})`;
    drop.classList.add("is-busy");
    drop.setAttribute("aria-busy", "true");
    status.hidden = false;
    setProgress(0);

    const data = new FormData();
    data.append("file", file, file.name);
    if (nameInput.value.trim()) data.append("name", nameInput.value.trim());

    const xhr = new XMLHttpRequest();
    xhr.open("POST", "/api/datasets");
    xhr.setRequestHeader("Accept", "application/json");
    xhr.upload.addEventListener("progress", (e) => {
      if (e.lengthComputable) setProgress(e.loaded / e.total);
    });
    xhr.addEventListener("load", () => {
      let body = xhr.responseText;
      try {
        body = JSON.parse(xhr.responseText);
      } catch (err) {
        /* keep the text */
      }
      if (xhr.status === 201 || xhr.status === 200) {
        setProgress(1);
        window.location.assign(`/datasets/${body.id}`);
      } else if (xhr.status === 401) {
        window.location.assign("/login?next=/datasets");
      } else {
        finish(Studio.errorMessage(body, xhr.status));
      }
    });
    xhr.addEventListener("error", () => finish("Upload failed: the server could not be reached."));
    xhr.addEventListener("abort", () => finish("Upload cancelled."));
    xhr.send(data);
  }

  input.addEventListener("change", () => upload(input.files[0]));
  form.addEventListener("submit", (e) => {
    e.preventDefault();
    upload(input.files[0]);
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
      Studio.showError(errorBox, "Drop one file at a time.");
      return;
    }
    upload(files[0]);
  });
  // A file dropped beside the zone would make the browser navigate away to it.
  window.addEventListener("dragover", (e) => e.preventDefault());
  window.addEventListener("drop", (e) => e.preventDefault());
})();

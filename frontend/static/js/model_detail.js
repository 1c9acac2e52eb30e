// Model page: follow a running import over SSE (stage, bar) and show the finished page when it ends;
// the admin's trust_remote_code switch.
"use strict";

(function () {
  const $ = (id) => document.getElementById(id);
  const page = $("model-page");
  const id = page.dataset.modelId;

  function showProgress(model) {
    const p = model.progress;
    Studio.setBadge($("model-status").querySelector(".badge"), model.status);
    if (!p || !$("model-import-bar")) return;
    const bar = $("model-import-bar");
    // Stages count whole; inside one, bytes or tensors done move the bar between its ends.
    const within = p.total && p.done != null ? Math.min(1, p.done / p.total) : 0;
    bar.max = p.steps;
    bar.value = p.step - 1 + within;
    const count = p.total && p.done != null ? ` · ${p.unit === "bytes" ? Studio.formatBytes(p.done) : p.done} of ${p.unit === "bytes" ? Studio.formatBytes(p.total) : p.total}` : "";
    $("model-import-stage").textContent = `${p.stage} (${p.step} of ${p.steps})${count}`;
    const history = $("model-import-history");
    history.replaceChildren(
      ...(p.history || []).map((h) => {
        const li = document.createElement("li");
        li.append(`${h.stage} `, Studio.timeElement(h.at));
        return li;
      }),
    );
  }

  if (page.dataset.status === "importing") {
    const source = new EventSource(`/api/models/${id}/stream`);
    source.addEventListener("model", (e) => showProgress(JSON.parse(e.data)));
    source.addEventListener("end", () => {
      source.close();
      window.location.reload(); // files, config and buttons are the server's rendering
    });
  }

  const trust = $("model-trust-toggle");
  if (trust) {
    trust.addEventListener("change", async () => {
      try {
        await Studio.fetchJSON(`/api/models/${id}`, { method: "PATCH", body: { trust_remote_code: trust.checked } });
        window.location.reload();
      } catch (err) {
        trust.checked = !trust.checked;
        window.alert(err.message);
      }
    });
  }
})();

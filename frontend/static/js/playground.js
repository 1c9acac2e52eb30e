// Playground: one prompt → a generation per column (base model left, fine-tuned job right), each streamed
// over its own EventSource. The generation ids go into the URL, so a reload replays both answers from the server.
"use strict";

(function () {
  const $ = (id) => document.getElementById(id);
  const data = JSON.parse($("pg-data").textContent);
  const jobsById = new Map(data.jobs.map((j) => [j.id, j]));
  const modelIds = new Set(data.models.map((m) => m.id));
  const sources = { left: null, right: null };
  const FINAL = new Set(["done", "failed"]);

  /* ---------- pickers ---------- */

  async function loadCheckpoints(jobId) {
    const select = $("pg-right-checkpoint");
    select.replaceChildren(new Option("Final output", ""));
    select.disabled = !jobId;
    if (!jobId) return;
    try {
      const checkpoints = await Studio.fetchJSON(`/api/jobs/${jobId}/checkpoints`);
      for (const c of checkpoints) select.add(new Option(`${c.name} (step ${c.step})`, c.name));
      // A job that has not finished answers only from its checkpoints: default to the newest.
      const job = jobsById.get(jobId);
      if (job && job.status !== "succeeded" && checkpoints.length) select.value = checkpoints[checkpoints.length - 1].name;
    } catch (err) {
      Studio.showError($("pg-form-error"), `Could not list the checkpoints of job ${jobId}: ${err.message}`);
    }
  }

  function onJobChange() {
    const jobId = Number($("pg-right-job").value) || null;
    const job = jobId && jobsById.get(jobId);
    // Compare like with like: the model the job started from goes on the left, unless one was picked.
    if (job && job.base_model_id && modelIds.has(job.base_model_id) && !$("pg-left-model").value) {
      $("pg-left-model").value = String(job.base_model_id);
    }
    loadCheckpoints(jobId);
  }

  /* ---------- columns ---------- */

  function column(side) {
    return {
      root: $(`pg-${side}`),
      status: $(`pg-${side}-status`),
      target: $(`pg-${side}-target`),
      error: $(`pg-${side}-error`),
      output: $(`pg-${side}-output`),
      empty: $(`pg-${side}-empty`),
      calls: $(`pg-${side}-calls`),
    };
  }

  // The tool calls the server found in an answer, each as a card of its own: the function's name, then its
  // arguments (pretty-printed when they are JSON).
  function showCalls(side, calls) {
    const box = column(side).calls;
    box.replaceChildren(
      ...(calls || []).map((call) => {
        const fn = call.function || {};
        let args = fn.arguments || "";
        try {
          args = JSON.stringify(JSON.parse(args), null, 2);
        } catch (err) {
          /* not JSON: shown as written */
        }
        const card = Object.assign(document.createElement("div"), { className: "playground-tool-call" });
        const head = Object.assign(document.createElement("p"), { className: "small", textContent: "Tool call: " });
        head.append(Object.assign(document.createElement("code"), { textContent: fn.name || "?" }));
        card.append(head, Object.assign(document.createElement("pre"), { textContent: args }));
        return card;
      })
    );
    box.hidden = !box.childElementCount;
  }

  async function loadCalls(side, id) {
    try {
      const g = await Studio.fetchJSON(`/api/generations/${id}`);
      if (column(side).root.dataset.generationId === String(id)) showCalls(side, g.tool_calls);
    } catch (err) {
      /* the answer itself is shown; the calls are a convenience */
    }
  }

  function setStatus(side, status) {
    const col = column(side);
    col.root.dataset.status = status;
    col.status.hidden = status === "idle";
    Studio.setBadge(col.status, status);
    col.output.setAttribute("aria-busy", String(status === "queued" || status === "running"));
    updateBusy();
  }

  function updateBusy() {
    const busy = ["left", "right"].filter((s) => ["queued", "running"].includes(column(s).root.dataset.status));
    $("pg-busy").textContent = busy.length ? `Generating (${busy.length} running)…` : "";
  }

  function resetColumn(side, text) {
    const col = column(side);
    if (sources[side]) sources[side].close();
    sources[side] = null;
    col.output.textContent = "";
    showCalls(side, []);
    col.empty.hidden = false;
    col.empty.textContent = text || "The answer appears here.";
    col.target.textContent = "—";
    Studio.showError(col.error, "");
    setStatus(side, "idle");
  }

  function follow(side, generation) {
    const col = column(side);
    if (sources[side]) sources[side].close();
    col.output.textContent = "";
    showCalls(side, []);
    col.empty.hidden = true;
    col.target.textContent = `${generation.target} · ${describe(generation.params)}`;
    col.root.dataset.generationId = generation.id;
    Studio.showError(col.error, "");
    setStatus(side, generation.status);
    // The server replays the stored answer first, then follows; on a dropped connection the browser
    // reconnects with Last-Event-ID (characters received) and gets only the rest.
    const source = new EventSource(`/api/generations/${generation.id}/stream`);
    sources[side] = source;
    const parse = (e) => {
      try {
        return JSON.parse(e.data);
      } catch (err) {
        return null;
      }
    };
    source.addEventListener("status", (e) => {
      const d = parse(e);
      if (d) setStatus(side, d.status);
    });
    source.addEventListener("token", (e) => {
      const d = parse(e);
      if (d) col.output.textContent += d.text;
    });
    source.addEventListener("end", (e) => {
      source.close();
      const d = parse(e) || {};
      setStatus(side, d.status || "done");
      if (d.error) Studio.showError(col.error, d.error);
      if (d.status === "done") loadCalls(side, generation.id);
      if (d.status === "done" && !col.output.textContent) {
        col.empty.hidden = false;
        col.empty.textContent = "The model answered with nothing (it ended its turn at once).";
      }
      loadHistory();
    });
    source.addEventListener("error", () => {
      if (source.readyState === EventSource.CLOSED && !FINAL.has(col.root.dataset.status)) {
        Studio.showError(col.error, "Disconnected from the server: reload the page to pick the answer up again.");
      }
    });
  }

  function describe(params) {
    if (!params) return "";
    if (params.task === "classify") return "classifier: label and probability";
    const how = Number(params.temperature) > 0 ? `temperature ${params.temperature}, top p ${params.top_p}` : "greedy";
    const tools = params.tools && params.tools.length ? `, ${params.tools.length} tool${params.tools.length > 1 ? "s" : ""}` : "";
    return `${how}, ≤${params.max_new_tokens} tokens, ${params.chat ? "chat layout" : "raw text"}${tools}`;
  }

  /* ---------- generate ---------- */

  function settings() {
    const body = {
      prompt: $("pg-prompt").value,
      max_new_tokens: Number($("pg-max-new-tokens").value),
      temperature: Number($("pg-temperature").value),
      top_p: Number($("pg-top-p").value),
    };
    const layout = $("pg-layout").value;
    if (layout) body.chat = layout === "chat";
    // Sent as written: the server parses it and names what is wrong (422 on field "tools").
    const tools = $("pg-tools").value.trim();
    if (tools) body.tools = tools;
    return body;
  }

  function remember() {
    const params = new URLSearchParams(location.search);
    for (const side of ["left", "right"]) {
      const id = column(side).root.dataset.generationId;
      if (id) params.set(side, id);
      else params.delete(side);
    }
    const job = $("pg-right-job").value;
    if (job) params.set("job_id", job);
    else params.delete("job_id");
    history.replaceState(null, "", `${location.pathname}?${params}`);
  }

  async function submit(event) {
    event.preventDefault();
    const formError = $("pg-form-error");
    Studio.showError(formError, "");
    const base = settings();
    const modelId = Number($("pg-left-model").value) || null;
    const jobId = Number($("pg-right-job").value) || null;
    if (!base.prompt.trim()) {
      Studio.showError(formError, "Write a prompt first.");
      $("pg-prompt").focus();
      return;
    }
    if (!modelId && !jobId) {
      Studio.showError(formError, "Pick a base model, a job, or both.");
      $("pg-left-model").focus();
      return;
    }
    const checkpoint = $("pg-right-checkpoint").value || undefined;
    const requests = [
      ["left", modelId && { ...base, model_id: modelId }],
      ["right", jobId && { ...base, job_id: jobId, checkpoint }],
    ];
    $("pg-generate").disabled = true;
    try {
      await Promise.all(
        requests.map(async ([side, body]) => {
          if (!body) {
            delete column(side).root.dataset.generationId;
            resetColumn(side, side === "left" ? "No base model picked." : "No job picked.");
            return;
          }
          resetColumn(side);
          setStatus(side, "queued");
          try {
            follow(side, await Studio.fetchJSON("/api/generations", { method: "POST", body }));
          } catch (err) {
            setStatus(side, "failed");
            Studio.showError(column(side).error, err.message);
          }
        })
      );
    } finally {
      $("pg-generate").disabled = false;
      remember();
      loadHistory();
    }
  }

  /* ---------- history ---------- */

  async function loadHistory() {
    const list = $("pg-history");
    let items;
    try {
      items = (await Studio.fetchJSON("/api/generations")).items;
    } catch (err) {
      list.replaceChildren(Object.assign(document.createElement("li"), { className: "muted", textContent: `Could not load the history: ${err.message}` }));
      return;
    }
    if (!items.length) {
      list.replaceChildren(Object.assign(document.createElement("li"), { className: "muted", textContent: "None yet." }));
      return;
    }
    list.replaceChildren(...items.map(historyItem));
  }

  function historyItem(g) {
    const li = document.createElement("li");
    li.className = "playground-history-item";
    li.dataset.generationId = g.id;
    const head = document.createElement("div");
    head.className = "playground-history-head";
    const who = Object.assign(document.createElement("span"), { className: "small", textContent: g.target });
    head.append(Studio.badge(g.status), who, Studio.timeElement(g.created_at));
    const prompt = Object.assign(document.createElement("p"), { className: "playground-history-prompt", textContent: g.prompt });
    const answer = Object.assign(document.createElement("p"), {
      className: "muted small playground-history-answer",
      textContent: g.error || g.output || "(no output yet)",
    });
    const actions = document.createElement("div");
    actions.className = "form-actions";
    const reuse = Object.assign(document.createElement("button"), { type: "button", className: "btn btn-small", textContent: "Use prompt" });
    reuse.addEventListener("click", () => {
      $("pg-prompt").value = g.prompt;
      $("pg-prompt").focus();
    });
    const show = Object.assign(document.createElement("button"), { type: "button", className: "btn btn-small btn-ghost", textContent: "Show answer" });
    show.addEventListener("click", () => {
      const side = g.model_id ? "left" : "right";
      follow(side, g);
      remember();
      column(side).root.scrollIntoView({ block: "nearest" });
    });
    actions.append(reuse, show);
    li.append(head, prompt, answer, actions);
    return li;
  }

  /* ---------- start ---------- */

  function restoreSettings(g) {
    // The form as it was when these answers were asked for: the same prompt and settings.
    $("pg-prompt").value = g.prompt;
    const p = g.params || {};
    if (p.max_new_tokens) $("pg-max-new-tokens").value = p.max_new_tokens;
    if (p.temperature != null) $("pg-temperature").value = p.temperature;
    if (p.top_p != null) $("pg-top-p").value = p.top_p;
    if (p.tools && p.tools.length) {
      $("pg-tools").value = JSON.stringify(p.tools, null, 2);
      $("pg-tools-field").open = true;
    }
  }

  async function restore() {
    const params = new URLSearchParams(location.search);
    for (const side of ["left", "right"]) {
      const id = Number(params.get(side));
      if (!id) continue;
      try {
        const g = await Studio.fetchJSON(`/api/generations/${id}`);
        if (!$("pg-prompt").value) restoreSettings(g);
        follow(side, g);
      } catch (err) {
        Studio.showError(column(side).error, `Generation ${id}: ${err.message}`);
      }
    }
  }

  $("pg-right-job").addEventListener("change", onJobChange);
  $("pg-form").addEventListener("submit", submit);
  $("pg-prompt").addEventListener("keydown", (e) => {
    if (e.key === "Enter" && (e.ctrlKey || e.metaKey)) $("pg-form").requestSubmit();
  });
  if ($("pg-right-job").value) onJobChange();
  restore();
  loadHistory();
})();

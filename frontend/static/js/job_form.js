// New-job wizard: one step at a time (kind → data → model → method → settings → review), the fields that fit
// the kind and method, an estimate with the dataset's dry run, JSON posted, 422 errors put next to their fields.
// The methods and objectives, what each takes and their settings come from the registry (backend/method/registry.py):
// the page renders their fields, and the catalog rides along in #studio-methods for the choices made here.
"use strict";

(function () {
  const $ = (id) => document.getElementById(id);
  const form = document.getElementById("job-form");
  const alertBox = document.getElementById("job-form-error");
  const submit = document.getElementById("job-submit");
  const dataset = document.getElementById("job-dataset");
  const validation = document.getElementById("job-validation-dataset");
  const method = document.getElementById("job-method");
  const objective = document.getElementById("job-objective");
  const hpInputs = [...form.querySelectorAll("[data-hp]")];
  // A method's or objective's own settings: data-config="method|objective", data-method/-objective, data-key.
  const configInputs = [...form.querySelectorAll("[data-config]")];
  const settingInputs = [...hpInputs, ...configInputs];
  const catalog = JSON.parse(document.getElementById("studio-methods").textContent);
  const METHODS = Object.fromEntries(catalog.methods.map((m) => [m.name, m]));
  const OBJECTIVES = Object.fromEntries(catalog.objectives.map((o) => [o.name, o]));
  const shortLabel = (entry) => entry.short_label;

  // Server field names → the control whose error line shows the message.
  const FIELD_INPUTS = {
    name: "job-name",
    priority: "job-priority",
    kind: "job-kind",
    dataset_id: "job-dataset",
    validation_dataset_id: "job-validation-dataset",
    architecture: "job-architecture",
    tokenizer_model: "job-tokenizer-model",
    base_model: "job-base-model",
    method: "job-method",
    objective: "job-objective",
    watch_prompts: "job-watch-prompts",
  };

  const kind = () => form.querySelector('input[name="kind"]:checked')?.value || "pretrain";

  function syncVisibility() {
    const k = kind();
    form.querySelectorAll("[data-kind]").forEach((el) => {
      // data-method / data-objective list the values a group belongs to, separated by spaces.
      const fits = (attr, value) => !attr || attr.split(" ").includes(value);
      const show =
        el.dataset.kind === k && fits(el.dataset.method, method.value) && fits(el.dataset.objective, objective.value);
      el.hidden = !show;
      // Disabled controls are skipped by validation and by the payload.
      el.querySelectorAll("input, select").forEach((c) => (c.disabled = !show));
    });
    syncMethodExtras();
  }

  // A separate validation file replaces the held-out fraction (a disabled input is left out of the payload).
  function syncValidation() {
    const fraction = document.getElementById("hp-validation_fraction");
    if (fraction && validation) fraction.disabled = Boolean(validation.value);
    if (validation && validation.value && validation.value === dataset.value) {
      markField("job-validation-dataset", "The validation dataset should not be the training dataset.");
    } else if (validation) {
      Studio.showError(errorLine("job-validation-dataset"), "");
    }
  }

  // Objectives the dataset's shape (and the kind) can train; the shape's natural one is picked.
  function syncObjective() {
    const shape = dataset.selectedOptions[0]?.dataset.shape;
    [...objective.options].forEach((o) => {
      const spec = OBJECTIVES[o.value];
      o.disabled = !spec.kinds.includes(kind()) || (Boolean(shape) && !spec.shapes.includes(shape));
    });
    const natural = catalog.objectives.find((o) => o.default_for.includes(shape));
    const enabled = [...objective.options].filter((o) => !o.disabled);
    objective.value = natural && enabled.some((o) => o.value === natural.name) ? natural.name : enabled[0]?.value || "";
    syncMethod();
  }

  // Methods that train the chosen objective; the reason a method is not offered is its option's title.
  function syncMethod() {
    const goal = OBJECTIVES[objective.value];
    [...method.options].forEach((o) => {
      const spec = METHODS[o.value];
      const fits = spec.kinds.includes(kind()) && (!goal || spec.objectives.includes(goal.name));
      o.disabled = !fits;
      o.title = fits
        ? ""
        : `${shortLabel(spec)} does not train ${goal ? shortLabel(goal) : "this objective"}; it trains ` +
          spec.objectives.map((name) => shortLabel(OBJECTIVES[name])).join(", ");
    });
    // Pretraining sends no method (its step is left out): the fine-tune's choice is kept for a switch back.
    if (kind() === "finetune" && method.selectedOptions[0]?.disabled) {
      const first = [...method.options].find((o) => !o.disabled);
      if (first) method.value = first.value;
    }
    syncVisibility();
  }

  // The help under each select follows the choice; a method that cannot recompute activations (prefix tuning: its
  // prefixes enter as a key/value cache) turns gradient checkpointing off while it is chosen.
  const checkpointing = document.getElementById("hp-gradient_checkpointing");
  let checkpointingWas = checkpointing ? checkpointing.checked : false;
  function syncMethodExtras() {
    form.querySelectorAll("[data-method-help]").forEach((p) => (p.hidden = p.dataset.methodHelp !== method.value));
    form
      .querySelectorAll("[data-objective-help]")
      .forEach((p) => (p.hidden = p.dataset.objectiveHelp !== objective.value));
    if (!checkpointing) return;
    const refuses = kind() === "finetune" && METHODS[method.value]?.gradient_checkpointing === false;
    if (refuses && !checkpointing.disabled) {
      checkpointingWas = checkpointing.checked;
      checkpointing.checked = false;
      checkpointing.disabled = true;
      checkpointing.title = `${shortLabel(METHODS[method.value])} cannot recompute activations`;
    } else if (!refuses && checkpointing.disabled) {
      checkpointing.disabled = false;
      checkpointing.checked = checkpointingWas;
      checkpointing.title = "";
    }
  }

  function errorLine(inputId) {
    return document.getElementById(`${inputId}-error`);
  }

  function clearErrors() {
    Studio.showError(alertBox, "");
    form.querySelectorAll(".field-error").forEach((el) => Studio.showError(el, ""));
    form.querySelectorAll("[aria-invalid]").forEach((el) => el.removeAttribute("aria-invalid"));
  }

  function markField(inputId, message) {
    const line = errorLine(inputId);
    if (!line) return false;
    Studio.showError(line, line.hidden ? message : `${line.textContent}\n${message}`);
    const control = document.getElementById(inputId);
    if (control) control.setAttribute("aria-invalid", "true");
    const details = line.closest("details");
    if (details) details.open = true;
    return true;
  }

  // A method's or objective's setting: its input in the chosen one's group. A check across its fields (field
  // "method_config" alone) goes to the field its message names first ("init_text is required when init is
  // ..."), else to the select.
  function configInputId(prefix, entry, key, message) {
    if (!entry) return null;
    const at = (n) => (message || "").search(new RegExp(`\\b${n}\\b`));
    const named = Object.keys(entry.settings.properties || {})
      .filter((n) => at(n) >= 0)
      .sort((a, b) => at(a) - at(b));
    const name = key || named[0];
    return name ? `${prefix}-${entry.name}-${name}` : null;
  }

  function inputIdFor(field, message = "") {
    if (!field) return null;
    const parts = field.split(".");
    if (parts[0] === "hyperparameters" && parts[1]) return `hp-${parts[1]}`;
    if (parts[0] === "method_config") {
      return configInputId("mc", METHODS[method.value], parts[1], message) || "job-method";
    }
    if (parts[0] === "objective_config") {
      return configInputId("oc", OBJECTIVES[objective.value], parts[1], message) || "job-objective";
    }
    return FIELD_INPUTS[parts[0]] || null;
  }

  // Model-level validators report at loc ["body"]; their message starts with the field it is about.
  function fieldInMessage(msg) {
    const text = Studio.cleanMessage(msg);
    return Object.keys(FIELD_INPUTS).find((f) => text.startsWith(`${f} `)) || null;
  }

  function showServerErrors(err) {
    const detail = err.body && err.body.detail;
    const items = Array.isArray(detail)
      ? detail.map((e) => ({
          field: Studio.fieldFromLoc(e.loc) || fieldInMessage(e.msg || ""),
          msg: Studio.cleanMessage(e.msg),
        }))
      : [{ field: err.body && err.body.field, msg: err.message }];
    const lines = items.map(({ field, msg }) => {
      markField(inputIdFor(field, msg), msg);
      return field ? `${field}: ${msg}` : msg;
    });
    Studio.showError(alertBox, lines.join("\n"));
    jumpToFirstError();
  }

  function focusFirstError() {
    const first = form.querySelector('[aria-invalid="true"]');
    if (first) first.focus();
    else alertBox.scrollIntoView({ block: "center" });
  }

  function clientMessage(input) {
    const n = Number(input.value);
    if (input.validity.badInput) return "Enter a number.";
    if (input.dataset.exclusiveMin !== undefined && input.value !== "" && n <= Number(input.dataset.exclusiveMin)) {
      return `Must be greater than ${input.dataset.exclusiveMin}.`;
    }
    if (input.dataset.exclusiveMax !== undefined && input.value !== "" && n >= Number(input.dataset.exclusiveMax)) {
      return `Must be less than ${input.dataset.exclusiveMax}.`;
    }
    if (input.validity.stepMismatch) return "Enter a whole number.";
    if (input.validity.rangeUnderflow) return `Must be at least ${input.min}.`;
    if (input.validity.rangeOverflow) return `Must be at most ${input.max}.`;
    return input.validationMessage;
  }

  // What stops each step, as [input id, message] pairs; Next checks the current step, Start every step.
  function stepProblems(step) {
    const problems = [];
    if (step === "data") {
      const shape = dataset.selectedOptions[0]?.dataset.shape;
      if (!dataset.value) problems.push(["job-dataset", "Upload a dataset first."]);
      else if (kind() === "pretrain" && shape && shape !== "text") {
        problems.push(["job-dataset", `Pretraining needs raw text; this dataset is ${shape.replace("_", "/")}.`]);
      }
      if (validation && validation.value && validation.value === dataset.value) {
        problems.push(["job-validation-dataset", "The validation dataset should not be the training dataset."]);
      }
    }
    const baseModel = $("job-base-model");
    if (step === "model" && kind() === "finetune" && !baseModel.value) {
      problems.push(["job-base-model", "Choose a base model."]);
    }
    if (step === "settings") {
      settingInputs
        .filter((i) => !i.disabled)
        .forEach((input) => {
          const msg = clientMessage(input);
          if (msg) problems.push([input.id, msg]);
        });
    }
    return problems;
  }

  function markProblems(problems) {
    problems.forEach(([id, msg]) => markField(id, msg));
    return problems.length === 0;
  }

  function settingValue(input) {
    const raw = input.value.trim();
    switch (input.dataset.type) {
      case "boolean":
        return input.checked;
      case "integer":
      case "number":
        return raw === "" ? undefined : Number(raw);
      case "array": {
        const items = raw.split(/[\s,]+/).filter(Boolean);
        return items.length ? items : undefined;
      }
      default:
        return raw === "" ? undefined : raw;
    }
  }

  function configValues(config, name) {
    const values = {};
    configInputs
      .filter((i) => i.dataset.config === config && i.dataset[config] === name && !i.disabled)
      .forEach((input) => {
        const value = settingValue(input);
        if (value !== undefined) values[input.dataset.key] = value;
      });
    return values;
  }

  function payload() {
    const body = { kind: kind(), dataset_id: Number(dataset.value), hyperparameters: {} };
    const name = document.getElementById("job-name").value.trim();
    if (name) body.name = name;
    const priority = document.getElementById("job-priority").value.trim();
    if (priority && Number(priority) !== 0) body.priority = Number(priority);
    if (validation && validation.value) body.validation_dataset_id = Number(validation.value);
    const prompts = document.getElementById("job-watch-prompts").value.split("\n").map((l) => l.trim());
    if (prompts.some(Boolean)) body.watch_prompts = prompts.filter(Boolean);
    if (body.kind === "pretrain") {
      body.architecture = document.getElementById("job-architecture").value;
      const tokenizerModel = document.getElementById("job-tokenizer-model").value;
      if (tokenizerModel) body.tokenizer_model = Number(tokenizerModel);
    } else {
      body.base_model = Number(document.getElementById("job-base-model").value);
      body.method = method.value;
      body.objective = objective.value;
      // Only the chosen method's and objective's fields (the other groups are hidden and disabled); an empty
      // field is left out, so the server fills its default.
      body.method_config = configValues("method", method.value);
      body.objective_config = configValues("objective", objective.value);
    }
    hpInputs
      .filter((i) => !i.disabled)
      .forEach((input) => {
        const value = settingValue(input);
        if (value !== undefined) body.hyperparameters[input.dataset.hp] = value;
      });
    if (formData.clone) body.cloned_from = formData.clone.id;
    return body;
  }

  /* ---------- presets and "clone and edit": fill the fields, then let the estimate follow ---------- */

  const formData = JSON.parse(document.getElementById("job-form-data").textContent);
  const presetButtons = [...form.querySelectorAll("[data-preset]")];

  function setHp(name, value) {
    setInput(document.getElementById(`hp-${name}`), value);
  }

  function setInput(input, value) {
    if (!input) return;
    if (input.dataset.type === "boolean") input.checked = Boolean(value);
    else if (value == null) input.value = "";
    else input.value = Array.isArray(value) ? value.join(", ") : String(value);
    input.removeAttribute("aria-invalid");
    Studio.showError(errorLine(input.id), "");
  }

  // backend/job/schemas.py HYPERPARAMETER_PRESETS: shared values, then the kind's own (the learning rate).
  function applyPreset(name) {
    const preset = formData.presets[name];
    Object.entries({ ...preset.common, ...preset[kind()] }).forEach(([key, value]) => setHp(key, value));
    presetButtons.forEach((b) => b.setAttribute("aria-pressed", String(b.dataset.preset === name)));
    scheduleEstimate();
  }

  function choose(select, value) {
    const ok = value != null && [...select.options].some((o) => o.value === String(value));
    if (ok) select.value = String(value);
    return ok;
  }

  // A stored config holds every field (defaults filled; null for an empty optional one).
  function fillConfig(config, name, values) {
    configInputs
      .filter((i) => i.dataset.config === config && i.dataset[config] === name)
      .forEach((input) => {
        if (input.dataset.key in values) setInput(input, values[input.dataset.key]);
      });
  }

  function prefill(job) {
    document.getElementById("job-name").value = `${job.name} (clone)`.slice(0, 200);
    setInput(document.getElementById("job-priority"), job.priority ?? 0);
    const radio = document.getElementById(`job-kind-${job.kind}`);
    if (radio) radio.checked = true;
    if (!choose(dataset, job.dataset_id)) markField("job-dataset", `Dataset ${job.dataset_id} is no longer available.`);
    syncObjective(); // picks the dataset's natural objective; the job's own is set below
    if (validation) choose(validation, job.validation_dataset_id ?? "");
    if (job.kind === "pretrain") {
      choose(document.getElementById("job-architecture"), job.architecture);
      choose(document.getElementById("job-tokenizer-model"), job.tokenizer_model_id ?? "");
    } else {
      if (!choose(document.getElementById("job-base-model"), job.base_model_id)) {
        markField("job-base-model", `Base model ${job.base_model_id} is not available (removed, or not ready).`);
      }
      choose(objective, job.objective);
      syncMethod();
      choose(method, job.method);
      fillConfig("method", job.method, job.method_config || {});
      fillConfig("objective", job.objective, job.objective_config || {});
    }
    // Stored hyperparameters leave out empty optional fields: empty those, keep the form's defaults for the rest.
    hpInputs.forEach((input) => {
      const key = input.dataset.hp;
      if (key in job.hyperparameters) setHp(key, job.hyperparameters[key]);
      else if (input.placeholder === "empty") setHp(key, null);
    });
    document.getElementById("job-watch-prompts").value = (job.watch_prompts || []).join("\n");
    syncVisibility();
    syncValidation();
  }

  presetButtons.forEach((b) => b.addEventListener("click", () => applyPreset(b.dataset.preset)));
  // A preset's learning rate depends on the kind: switching kind re-applies the chosen preset.
  form.querySelectorAll('input[name="kind"]').forEach((r) =>
    r.addEventListener("change", () => {
      const pressed = presetButtons.find((b) => b.getAttribute("aria-pressed") === "true");
      if (pressed) applyPreset(pressed.dataset.preset);
    }),
  );
  // Editing a field by hand means the form no longer is the preset as shown.
  hpInputs.forEach((input) =>
    input.addEventListener("input", () => presetButtons.forEach((b) => b.setAttribute("aria-pressed", "false"))),
  );

  /* ---------- estimate: parameters, tokens, steps, FLOPs, time and memory before launch ---------- */

  let estimateTimer = null;
  let estimateSeq = 0;

  function human(n, unit = "") {
    if (n == null) return "—";
    const units = ["", "k", "M", "G", "T", "P", "E"];
    let i = 0;
    while (Math.abs(n) >= 1000 && i < units.length - 1) {
      n /= 1000;
      i += 1;
    }
    return `${n.toFixed(n < 10 && i > 0 ? 2 : 0)}${units[i]}${unit}`;
  }

  function duration(s) {
    if (s == null) return "unknown";
    if (s < 90) return `~${Math.round(s)} s`;
    if (s < 5400) return `~${Math.round(s / 60)} min`;
    return `~${(s / 3600).toFixed(1)} h`;
  }

  function renderEstimate(est) {
    $("est-parameters").textContent = `${human(est.trainable_parameters)} / ${human(est.total_parameters)}`;
    $("est-tokens-epoch").textContent = `${human(est.tokens_per_epoch)}${est.tokens_exact ? "" : " (approx.)"}`;
    $("est-steps").textContent = est.steps.toLocaleString();
    $("est-flops").textContent = Number(est.flops).toExponential(2);
    $("est-time").textContent = duration(est.seconds);
    $("est-memory").textContent =
      `${Studio.formatBytes(est.memory_bytes)}` +
      (est.device_memory_bytes ? ` of ${Studio.formatBytes(est.device_memory_bytes)}` : "");
    const fit = $("est-fit");
    fit.hidden = est.fits == null;
    fit.className = `alert ${est.fits ? "alert-ok" : "alert-error"}`;
    fit.textContent = est.fits
      ? `Fits on ${est.device}.`
      : `Does not fit on ${est.device}: ${est.advice.join("; ")}.`;
    $("est-notes").replaceChildren(
      ...est.notes.map((n) => {
        const li = document.createElement("li");
        li.textContent = n;
        return li;
      }),
    );
    $("job-estimate-state").textContent = "Estimated from the settings above.";
    renderChecks(est.problems || []);
  }

  // The pre-flight problems the dry run shows: the worker would stop the job before its first step, so the
  // Review step lists them and Start waits until the settings change.
  let blockingChecks = [];
  function renderChecks(problems) {
    blockingChecks = problems;
    $("review-checks").hidden = problems.length === 0;
    $("review-check-list").replaceChildren(
      ...problems.map((p) => {
        const li = document.createElement("li");
        li.textContent = `${p.field}: ${p.message}`;
        return li;
      }),
    );
    submit.disabled = problems.length > 0;
  }

  async function estimate() {
    if (!dataset.value) return;
    const seq = ++estimateSeq;
    const body = payload();
    try {
      const est = await Studio.fetchJSON("/api/jobs/estimate", { method: "POST", body });
      if (seq !== estimateSeq) return;
      renderEstimate(est);
      renderDryRun(est, body);
    } catch (err) {
      if (seq === estimateSeq) $("job-estimate-state").textContent = `No estimate: ${err.message}`;
    }
  }

  function scheduleEstimate() {
    clearTimeout(estimateTimer);
    estimateTimer = setTimeout(estimate, 400);
  }

  form.addEventListener("input", scheduleEstimate);
  form.addEventListener("change", scheduleEstimate);

  /* ---------- the dataset's dry run: exact tokens, masking and truncation, counted by a worker ---------- */

  const PENDING = new Set(["queued", "running"]);
  const dryRuns = {}; // "dataset|model|objective|max_length" → {state: "counting" | "done" | "failed", ...}
  let dryRunKey = null; // the one the form shows now

  // Whose tokenizer counts the tokens, or why nothing can count them before launch.
  function dryRunSource(est, body) {
    if (body.kind === "pretrain") {
      if (!body.tokenizer_model) {
        return {
          reason:
            "Tokens per epoch are estimated: the tokenizer is trained on the dataset when the job starts, so " +
            "there is nothing to count with yet (reuse a model's tokenizer for an exact dry run).",
        };
      }
      return { model: body.tokenizer_model, objective: "causal_lm" };
    }
    if (!body.base_model) return { reason: "Choose a base model for a dry run of the dataset." };
    // Every objective has a dry run (workers/analysis/tokens.py): no second list of them here.
    return { model: body.base_model, objective: est.objective };
  }

  // The line under the estimate: text, plus a progress bar while counting or a Retry once it failed.
  function dryRunLine(text, state, run = null) {
    const line = $("est-dry-run");
    line.replaceChildren(text);
    line.dataset.state = state;
    if (state === "counting" && run && run.total) {
      const bar = document.createElement("progress");
      bar.className = "dry-run-progress";
      bar.max = Math.max(1, run.total);
      bar.value = Math.min(run.done, run.total);
      bar.setAttribute("aria-label", "Dry run progress");
      line.append(" ", bar);
    }
    if (state === "failed" && run) {
      const retry = document.createElement("button");
      retry.type = "button";
      retry.className = "btn btn-small dry-run-retry";
      retry.textContent = "Retry";
      retry.addEventListener("click", () => countTokens(run.key, run.datasetId, run.params, true));
      line.append(" ", retry);
    }
  }

  const count = (n) => Number(n || 0).toLocaleString();

  function renderDryRun(est, body) {
    if (est.dry_run) {
      const d = est.dry_run;
      dryRunKey = null;
      dryRunLine(
        `Dry run: ${count(d.supervised_tokens)} trained of ${count(d.tokens)} tokens (${count(d.masked_tokens)} masked), ` +
          `${count(d.truncated_records)} records truncated, ${count(d.lost_supervised_tokens)} supervised tokens lost ` +
          "to truncation.",
        "done",
      );
      return;
    }
    const source = dryRunSource(est, body);
    if (source.reason) {
      dryRunKey = null;
      dryRunLine(source.reason, "estimated");
      return;
    }
    const hp = body.hyperparameters;
    const params = {
      base_model: source.model,
      objective: source.objective,
      max_length: hp.max_length ?? $("hp-max_length").placeholder,
      batch_size: hp.batch_size ?? $("hp-batch_size").placeholder,
    };
    dryRunKey = [body.dataset_id, params.base_model, params.objective, params.max_length].join("|");
    const run = dryRuns[dryRunKey];
    // Counting queues work on a worker: only once the person reached the settings, not while browsing choices.
    if (!run && estimateCard.hidden) dryRunLine("The dry run is counted at the settings step.", "estimated");
    else if (!run) countTokens(dryRunKey, body.dataset_id, params);
    else if (run.state === "failed") dryRunLine(`Dry run failed: ${run.error}`, "failed", run);
    else if (run.state === "done") dryRunLine("Dry run counted, but not for these settings; estimated.", "estimated");
    else dryRunLine(run.text, "counting", run);
  }

  // Follow one analysis over SSE until its `end`; resolves with its last state. EventSource reconnects by
  // itself, and the state it gets first on a reconnect resyncs. One at a time: a browser keeps six connections
  // per host, so a follow for settings the person has since changed is closed (resolving "superseded").
  let following = null;
  function followAnalysis(id, onState) {
    if (following) following.finish({ status: "superseded" });
    return new Promise((resolve) => {
      const source = new EventSource(`/api/datasets/analyses/${id}/stream`);
      let last = null;
      const finish = (state) => {
        source.close();
        if (following && following.source === source) following = null;
        resolve(state);
      };
      following = { source, finish };
      source.addEventListener("analysis", (e) => {
        last = JSON.parse(e.data);
        onState(last);
      });
      source.addEventListener("end", (e) => {
        const end = JSON.parse(e.data);
        if (end.status === "deleted") finish({ status: "failed", error: "the dataset was deleted" });
        else finish(last);
      });
      source.addEventListener("error", () => {
        if (source.readyState === EventSource.CLOSED) finish({ status: "failed", error: "lost the connection" });
      });
    });
  }

  // POST /api/datasets/{id}/stats queues a worker analysis (or answers from its cache); follow it live, then
  // estimate again: the estimate now finds the statistics and its tokens per epoch become exact.
  async function countTokens(key, datasetId, params, refresh = false) {
    const run = (dryRuns[key] = { key, datasetId, params, state: "counting", text: "Counting tokens…" });
    const show = (state) => {
      const p = state.progress;
      run.done = p && p.phase === "tokenizing" ? p.done : 0;
      run.total = p && p.phase === "tokenizing" ? p.total : 0;
      run.text =
        state.status === "queued"
          ? "Counting tokens… (waiting for the analysis worker)"
          : run.total
            ? `Counting tokens… ${count(run.done)} / ${count(run.total)} records`
            : "Counting tokens… (a worker is reading the dataset)";
      if (dryRunKey === key && dryRuns[key] === run) dryRunLine(run.text, "counting", run);
    };
    if (dryRunKey === key) dryRunLine(run.text, "counting");
    const query = new URLSearchParams({ ...params, ...(refresh ? { refresh: "true" } : {}) });
    try {
      let analysis = await Studio.fetchJSON(`/api/datasets/${datasetId}/stats?${query}`, { method: "POST" });
      if (PENDING.has(analysis.status)) {
        show(analysis);
        analysis = await followAnalysis(analysis.id, (state) => PENDING.has(state.status) && show(state));
      }
      if (analysis && analysis.status === "superseded") {
        delete dryRuns[key]; // counted again (or read from the cache) if the person comes back to these settings
        return;
      }
      if (!analysis || analysis.status !== "done") throw new Error((analysis && analysis.error) || "the analysis failed");
      run.state = "done";
      if (dryRunKey === key) estimate();
    } catch (err) {
      run.state = "failed";
      run.error = err.message;
      if (dryRunKey === key && dryRuns[key] === run) dryRunLine(`Dry run failed: ${err.message}`, "failed", run);
    }
  }

  /* ---------- the wizard: a step at a time, Next checks the step, a 422 goes back to its field ---------- */

  const steps = [...form.querySelectorAll("section[data-step]")];
  const back = $("wizard-back");
  const next = $("wizard-next");
  const estimateCard = $("job-estimate");
  const visited = new Set();
  let current = "kind";

  // Pretraining has no method to choose: its step is left out.
  const activeSteps = () => steps.map((s) => s.dataset.step).filter((s) => s !== "method" || kind() === "finetune");
  const stepOf = (el) => el?.closest("section[data-step]")?.dataset.step || null;

  function renderTabs() {
    const active = activeSteps();
    form.querySelectorAll("[data-step-item]").forEach((li) => {
      const step = li.dataset.stepItem;
      const tab = li.querySelector("[data-goto]");
      li.hidden = !active.includes(step);
      tab.querySelector(".wizard-num").textContent = String(active.indexOf(step) + 1);
      if (step === current) tab.setAttribute("aria-current", "step");
      else tab.removeAttribute("aria-current");
      tab.disabled = !visited.has(step) && step !== current;
      const broken = Boolean(form.querySelector(`section[data-step="${step}"] [aria-invalid="true"]`));
      tab.classList.toggle("has-error", broken);
      tab.classList.toggle("visited", visited.has(step));
      tab.querySelector(".wizard-tab-state").textContent = broken
        ? " (needs attention)"
        : step === current
          ? " (current step)"
          : visited.has(step)
            ? " (visited)"
            : " (not yet reached)";
    });
  }

  function showStep(step, { focus = true } = {}) {
    current = activeSteps().includes(step) ? step : "kind";
    visited.add(current);
    steps.forEach((s) => (s.hidden = s.dataset.step !== current));
    // The estimate answers "will it fit, how long": it belongs beside the settings and the final check.
    estimateCard.hidden = !["settings", "review"].includes(current);
    const at = activeSteps().indexOf(current);
    back.hidden = at === 0;
    next.hidden = current === "review";
    submit.hidden = current !== "review";
    if (current === "review") renderSummary();
    if (!estimateCard.hidden) scheduleEstimate();
    renderTabs();
    if (focus) {
      const heading = $(`step-${current}-title`);
      heading.focus({ preventScroll: true });
      window.scrollTo({ top: 0 }); // a step starts at the top of the page, indicator and heading in view
    }
  }

  function goNext() {
    clearErrors();
    if (!markProblems(stepProblems(current))) {
      Studio.showError(alertBox, "Some fields need attention.");
      renderTabs();
      focusFirstError();
      return;
    }
    const active = activeSteps();
    showStep(active[Math.min(active.indexOf(current) + 1, active.length - 1)]);
  }

  function goBack() {
    const active = activeSteps();
    showStep(active[Math.max(active.indexOf(current) - 1, 0)]);
  }

  // Open the step that holds the first marked field, and put the cursor there.
  function jumpToFirstError() {
    const first = form.querySelector('[aria-invalid="true"]');
    const step = stepOf(first);
    if (step && step !== current) showStep(step, { focus: false });
    else renderTabs();
    focusFirstError();
  }

  /* ---------- review: what the job will be, each line a way back to its step ---------- */

  const optionText = (select) => (select.value ? select.selectedOptions[0]?.textContent.trim() : "") || "—";

  // "LoRA · r 8, alpha 16": the entry's name and what its settings hold (a switch only when on); a key loses the
  // prefix its settings class shares (lora_alpha → alpha).
  function brief(entry, values) {
    if (!entry) return "—";
    const prefix = `${entry.settings.title.replace(/Settings$/, "").toLowerCase()}_`;
    const parts = Object.entries(values)
      .filter(([, v]) => v !== false)
      .map(([k, v]) => {
        const key = k.startsWith(prefix) ? k.slice(prefix.length) : k;
        const shown = v === true ? "" : ` ${Array.isArray(v) ? v.join("/") : v}`;
        return `${key.replaceAll("_", " ")}${shown}`;
      });
    return parts.length ? `${shortLabel(entry)} · ${parts.join(", ")}` : shortLabel(entry);
  }

  function summaryRows() {
    const body = payload();
    const hp = body.hyperparameters;
    const rows = [
      ["Kind", body.kind === "pretrain" ? "Pretrain from scratch" : "Fine-tune", "kind"],
      ["Dataset", optionText(dataset), "data"],
      ["Validation", validation && validation.value ? optionText(validation) : "A held-out fraction", "data"],
      ["Watch prompts", body.watch_prompts ? `${body.watch_prompts.length}` : "None", "data"],
    ];
    if (body.kind === "pretrain") {
      rows.push(["Architecture", optionText($("job-architecture")), "model"]);
      rows.push(["Tokenizer", optionText($("job-tokenizer-model")), "model"]);
    } else {
      rows.push(["Base model", optionText($("job-base-model")), "model"]);
      rows.push(["Method", brief(METHODS[method.value], body.method_config), "method"]);
      rows.push(["Objective", brief(OBJECTIVES[objective.value], body.objective_config), "method"]);
    }
    const length = hp.max_steps != null ? `${hp.max_steps} steps` : `${hp.epochs ?? 1} epochs`;
    rows.push(["Length", length, "settings"]);
    rows.push(["Learning rate", String(hp.learning_rate ?? "default"), "settings"]);
    rows.push(["Batch × max length", `${hp.batch_size ?? "default"} × ${hp.max_length ?? "default"}`, "settings"]);
    return rows;
  }

  function renderSummary() {
    $("review-summary").replaceChildren(
      ...summaryRows().map(([label, value, step]) => {
        const row = document.createElement("div");
        const dt = document.createElement("dt");
        const dd = document.createElement("dd");
        const edit = document.createElement("button");
        dt.textContent = label;
        dd.textContent = `${value} `;
        edit.type = "button";
        edit.className = "btn-link review-edit";
        edit.dataset.goto = step;
        edit.textContent = "Edit";
        edit.setAttribute("aria-label", `Edit ${label.toLowerCase()}`);
        dd.append(edit);
        row.append(dt, dd);
        return row;
      }),
    );
  }

  form.addEventListener("click", (e) => {
    const target = e.target.closest("[data-goto]");
    if (target && !target.disabled) showStep(target.dataset.goto);
  });
  next.addEventListener("click", goNext);
  back.addEventListener("click", goBack);
  // Enter moves on (a textarea keeps its newlines; buttons and links keep their own Enter).
  form.addEventListener("keydown", (e) => {
    if (e.key !== "Enter" || e.isComposing || e.defaultPrevented) return;
    if (!e.target.matches("input, select")) return;
    e.preventDefault();
    if (current === "review") form.requestSubmit(submit);
    else goNext();
  });

  form.addEventListener("submit", async (e) => {
    e.preventDefault();
    if (current !== "review") {
      goNext();
      return;
    }
    clearErrors();
    if (!markProblems(activeSteps().flatMap(stepProblems))) {
      Studio.showError(alertBox, "Some fields need attention.");
      jumpToFirstError();
      return;
    }
    await start(false);
  });

  // POST the job; a job that fits no live worker comes back 422 "does_not_fit": say so and offer "Start anyway".
  async function start(force) {
    submit.disabled = true;
    submit.textContent = "Starting…";
    $("review-fit").hidden = true;
    try {
      const body = force ? { ...payload(), force: true } : payload();
      const job = await Studio.fetchJSON("/api/jobs", { method: "POST", body });
      window.location.assign(`/jobs/${job.id}`);
    } catch (err) {
      if (err.body && err.body.code === "does_not_fit") {
        $("review-fit-message").textContent = err.message;
        $("review-fit").hidden = false;
      } else {
        if (err.body && err.body.code === "preflight") renderChecks(err.body.problems || []);
        showServerErrors(err);
      }
      submit.disabled = blockingChecks.length > 0;
      submit.textContent = "Start training";
    }
  }
  $("review-force").addEventListener("click", () => start(true));

  form.querySelectorAll('input[name="kind"]').forEach((r) =>
    r.addEventListener("change", () => {
      syncObjective(); // the kind narrows the objectives (pretraining: causal LM) and so the methods
      renderTabs(); // the method step comes and goes with the kind
    }),
  );
  method.addEventListener("change", syncVisibility);
  objective.addEventListener("change", syncMethod);
  dataset.addEventListener("change", syncObjective);
  dataset.addEventListener("change", syncValidation);
  if (validation) validation.addEventListener("change", syncValidation);
  settingInputs.forEach((input) =>
    input.addEventListener("input", () => {
      input.removeAttribute("aria-invalid");
      Studio.showError(errorLine(input.id), "");
    }),
  );
  syncObjective();
  syncVisibility();
  syncValidation();
  if (formData.clone) prefill(formData.clone);
  // A clone holds a whole job already: open at the review with every step reachable.
  if (form.dataset.startStep === "review") activeSteps().forEach((step) => visited.add(step));
  showStep(form.dataset.startStep || "kind", { focus: false });
  estimate();
})();

// New-job form: show the fields that fit the kind and method, post JSON, put 422 errors next to fields.
"use strict";

(function () {
  const form = document.getElementById("job-form");
  const alertBox = document.getElementById("job-form-error");
  const submit = document.getElementById("job-submit");
  const dataset = document.getElementById("job-dataset");
  const validation = document.getElementById("job-validation-dataset");
  const method = document.getElementById("job-method");
  const objective = document.getElementById("job-objective");
  const hpInputs = [...form.querySelectorAll("[data-hp]")];

  // Server field names → the control whose error line shows the message.
  const FIELD_INPUTS = {
    name: "job-name",
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

  // Which dataset shapes each objective trains on (backend/job/service.py OBJECTIVE_SHAPES), and the natural pick.
  const OBJECTIVE_SHAPES = {
    causal_lm: ["text", "prompt_completion"],
    sft: ["prompt_completion", "messages"],
    dpo: ["preference"],
    classification: ["classification"],
  };
  const DEFAULT_OBJECTIVE = {
    text: "causal_lm",
    prompt_completion: "sft",
    messages: "sft",
    preference: "dpo",
    classification: "classification",
  };

  function syncObjective() {
    const shape = dataset.selectedOptions[0]?.dataset.shape;
    [...objective.options].forEach((o) => (o.disabled = Boolean(shape) && !OBJECTIVE_SHAPES[o.value].includes(shape)));
    objective.value = DEFAULT_OBJECTIVE[shape] || "causal_lm";
    syncVisibility();
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

  function inputIdFor(field) {
    if (!field) return null;
    const parts = field.split(".");
    if (parts[0] === "hyperparameters" && parts[1]) return `hp-${parts[1]}`;
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
      markField(inputIdFor(field), msg);
      return field ? `${field}: ${msg}` : msg;
    });
    Studio.showError(alertBox, lines.join("\n"));
    focusFirstError();
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

  function validateClient() {
    const problems = [];
    hpInputs
      .filter((i) => !i.disabled)
      .forEach((input) => {
        const msg = clientMessage(input);
        if (msg) problems.push([input.id, msg]);
      });
    if (!dataset.value) problems.push(["job-dataset", "Upload a dataset first."]);
    const baseModel = document.getElementById("job-base-model");
    if (kind() === "finetune" && !baseModel.value) problems.push(["job-base-model", "Choose a base model."]);
    problems.forEach(([id, msg]) => markField(id, msg));
    return problems.length === 0;
  }

  function hpValue(input) {
    const raw = input.value.trim();
    switch (input.dataset.hpType) {
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

  function payload() {
    const body = { kind: kind(), dataset_id: Number(dataset.value), hyperparameters: {} };
    const name = document.getElementById("job-name").value.trim();
    if (name) body.name = name;
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
    }
    hpInputs
      .filter((i) => !i.disabled)
      .forEach((input) => {
        const value = hpValue(input);
        if (value !== undefined) body.hyperparameters[input.dataset.hp] = value;
      });
    if (formData.clone) body.cloned_from = formData.clone.id;
    return body;
  }

  /* ---------- presets and "clone and edit": fill the fields, then let the estimate follow ---------- */

  const formData = JSON.parse(document.getElementById("job-form-data").textContent);
  const presetButtons = [...form.querySelectorAll("[data-preset]")];

  function setHp(name, value) {
    const input = document.getElementById(`hp-${name}`);
    if (!input) return;
    if (input.dataset.hpType === "boolean") input.checked = Boolean(value);
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

  function prefill(job) {
    document.getElementById("job-name").value = `${job.name} (clone)`.slice(0, 200);
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
      choose(method, job.method);
      choose(objective, job.objective);
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
  const $ = (id) => document.getElementById(id);

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
    const notes = [...est.notes];
    if (est.dry_run) {
      const d = est.dry_run;
      notes.unshift(
        `Dry run: ${human(d.supervised_tokens)} trained of ${human(d.tokens)} tokens` +
          (d.lost_supervised_tokens ? `, ${human(d.lost_supervised_tokens)} lost to truncation` : ""),
      );
    }
    $("est-notes").replaceChildren(
      ...notes.map((n) => {
        const li = document.createElement("li");
        li.textContent = n;
        return li;
      }),
    );
    $("job-estimate-state").textContent = "Estimated from the settings above.";
  }

  async function estimate() {
    if (!dataset.value) return;
    const seq = ++estimateSeq;
    try {
      const est = await Studio.fetchJSON("/api/jobs/estimate", { method: "POST", body: payload() });
      if (seq === estimateSeq) renderEstimate(est);
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

  form.addEventListener("submit", async (e) => {
    e.preventDefault();
    clearErrors();
    if (!validateClient()) {
      Studio.showError(alertBox, "Some fields need attention.");
      focusFirstError();
      return;
    }
    submit.disabled = true;
    submit.textContent = "Starting…";
    try {
      const job = await Studio.fetchJSON("/api/jobs", { method: "POST", body: payload() });
      window.location.assign(`/jobs/${job.id}`);
    } catch (err) {
      showServerErrors(err);
      submit.disabled = false;
      submit.textContent = "Start training";
    }
  });

  form.querySelectorAll('input[name="kind"]').forEach((r) => r.addEventListener("change", syncVisibility));
  method.addEventListener("change", syncVisibility);
  objective.addEventListener("change", syncVisibility);
  dataset.addEventListener("change", syncObjective);
  dataset.addEventListener("change", syncValidation);
  if (validation) validation.addEventListener("change", syncValidation);
  hpInputs.forEach((input) =>
    input.addEventListener("input", () => {
      input.removeAttribute("aria-invalid");
      Studio.showError(errorLine(input.id), "");
    }),
  );
  syncObjective();
  syncVisibility();
  syncValidation();
  if (formData.clone) prefill(formData.clone);
  estimate();
})();

// Methods view: estimates of the ticked methods before launch (trainable share checked against the usual one),
// one job per method at launch, then a live table of what each run cost and reached.
"use strict";

(function () {
  const $ = (id) => document.getElementById(id);
  const facts = JSON.parse($("methods-catalog").textContent);
  const ids = JSON.parse($("methods-ids").textContent);
  const FINAL = new Set(["succeeded", "failed", "cancelled"]);
  const POLL_MS = 2000;
  const COLORS = ["#4f7cff", "#e8833a", "#2bb673", "#c94fd1", "#d64545", "#1fb5c9", "#8a8f2a", "#7a5cff"];

  const fmt = {
    int: (v) => (v == null ? "—" : Math.round(v).toLocaleString()),
    loss: (v) => (v == null ? "—" : v.toFixed(4)),
    bytes: (v) => (v == null ? "—" : Studio.formatBytes(v)),
    seconds: (v) => (v == null ? "—" : `${v.toFixed(1)} s`),
    rate: (v) => (v == null ? "—" : `${Math.round(v).toLocaleString()} tok/s`),
    // A share of the parameters in percent: two significant digits below 1%, two decimals above.
    percent: (v) => (v == null ? "—" : v === 0 ? "0%" : v >= 1 ? `${+v.toFixed(2)}%` : `${+v.toPrecision(2)}%`),
    accuracy: (v) => (v == null ? "—" : `${(v * 100).toFixed(1)}%`),
    count: (v) => {
      if (v == null) return "?";
      const [div, unit] = v >= 1e9 ? [1e9, "B"] : v >= 1e6 ? [1e6, "M"] : v >= 1e3 ? [1e3, "k"] : [1, ""];
      return `${+(v / div).toPrecision(2)}${unit}`;
    },
  };

  function el(tag, text, attrs = {}) {
    const node = document.createElement(tag);
    if (text != null) node.textContent = text;
    Object.entries(attrs).forEach(([k, v]) => node.setAttribute(k, v));
    return node;
  }

  // The usual share of a method, checked on this model: "LoRA trains 0.42% of tiny's 1.2M parameters — within
  // the usual 0.1–1%".
  function claim(method, trainable, total, model) {
    const fact = facts[method] || { short_label: method, share: "?", share_range: null };
    const percent = (100 * trainable) / total;
    const usual = fact.share.replaceAll("-", "–");
    let verdict = `the registry gives no fixed share for it (${usual})`;
    if (fact.share_range) {
      const [low, high] = fact.share_range;
      const where = percent < low ? "below" : percent > high ? "above" : "within";
      verdict = `${where} the usual ${usual}`;
    }
    return `${fact.short_label} trains ${fmt.percent(percent)} of ${model}'s ${fmt.count(total)} parameters — ${verdict}`;
  }

  // --- before launch ----------------------------------------------------------------------------------------
  const form = $("methods-form");
  const boxes = () => [...form.querySelectorAll("input[name=method]")];
  const ticked = () => boxes().filter((b) => b.checked && !b.disabled);
  const option = (id) => $(id).selectedOptions[0] || null;

  // A method that cannot train the dataset's objective (or needs a worker nobody runs) is off, with the reason.
  function applyDataset() {
    const objective = option("methods-dataset")?.dataset.objective;
    boxes().forEach((box) => {
      let reason = box.dataset.unavailable;
      if (!reason && objective && !box.dataset.objectives.split(" ").includes(objective)) {
        reason = `does not train ${objective}, this dataset's objective`;
      }
      box.disabled = Boolean(reason);
      if (reason) box.checked = false;
      const note = $(`methods-reason-${box.value}`);
      note.textContent = reason ? `— ${reason}` : "";
      note.hidden = !reason;
    });
  }

  function hyperparameters() {
    const hp = {};
    form.querySelectorAll("input[type=number]").forEach((input) => {
      if (input.value !== "") hp[input.name] = Number(input.value);
    });
    return hp;
  }

  function jobBody(method) {
    const dataset = option("methods-dataset");
    return {
      name: `${dataset.dataset.name} · ${method}`,
      kind: "finetune",
      dataset_id: Number(dataset.value),
      base_model: Number($("methods-base").value),
      method,
      hyperparameters: hyperparameters(),
    };
  }

  function fieldError(id, message) {
    Studio.showError($(id), message);
  }

  function checkForm() {
    fieldError("methods-dataset-error", option("methods-dataset") ? "" : "Upload a dataset to fine-tune on first.");
    fieldError("methods-base-error", option("methods-base") ? "" : "Add a base model first.");
    fieldError("methods-method-error", ticked().length ? "" : "Tick at least one method.");
    return Boolean(option("methods-dataset") && option("methods-base") && ticked().length);
  }

  let round = 0; // a newer round of estimates makes the answers of an older one stale
  async function estimate() {
    const mine = ++round;
    const list = $("methods-estimates");
    const methods = ticked().map((b) => b.value);
    if (!methods.length || !option("methods-dataset") || !option("methods-base")) {
      list.replaceChildren(el("li", "Tick the methods to compare: each one's trainable parameters and memory appear here.", { class: "muted" }));
      return;
    }
    const model = option("methods-base").dataset.name;
    const answers = await Promise.all(
      methods.map((m) =>
        Studio.fetchJSON("/api/jobs/estimate", { method: "POST", body: jobBody(m) }).then(
          (est) => ({ m, est }),
          (err) => ({ m, err }),
        ),
      ),
    );
    if (mine !== round) return;
    list.replaceChildren(
      ...answers.map(({ m, est, err }) => {
        const item = el("li", null, { "data-method": m });
        item.append(el("strong", facts[m]?.short_label || m), ": ");
        if (err) {
          item.append(el("span", err.message, { class: "field-error" }));
          return item;
        }
        item.append(
          `${fmt.int(est.trainable_parameters)} of ${fmt.int(est.total_parameters)} parameters train, about ` +
            `${fmt.bytes(est.memory_bytes)} of memory. `,
          el("span", `${claim(m, est.trainable_parameters, est.total_parameters, model)}.`, { class: "method-claim" }),
        );
        return item;
      }),
    );
  }

  let timer = null;
  function estimateSoon() {
    clearTimeout(timer);
    timer = setTimeout(estimate, 300);
  }

  async function launch(event) {
    event.preventDefault();
    Studio.showError($("methods-error"), "");
    if (!checkForm()) return;
    const button = $("methods-launch");
    button.disabled = true;
    const launched = [];
    for (const box of ticked()) {
      try {
        const job = await Studio.fetchJSON("/api/jobs", { method: "POST", body: jobBody(box.value) });
        launched.push(job.id);
      } catch (err) {
        const done = launched.length ? ` (${launched.length} launched: /methods?ids=${launched.join(",")})` : "";
        Studio.showError($("methods-error"), `${box.value}: ${err.message}${done}`);
        button.disabled = false;
        return;
      }
    }
    window.location.assign(`/methods?ids=${launched.join(",")}`);
  }

  form.addEventListener("change", (event) => {
    if (event.target.id === "methods-dataset") applyDataset();
    estimateSoon();
  });
  form.addEventListener("input", estimateSoon);
  form.addEventListener("submit", launch);
  applyDataset();
  estimate();

  // --- results ----------------------------------------------------------------------------------------------
  if (!ids.length) return;
  let runs = [];
  let chart = null;
  const estimates = {}; // job id -> the estimate's memory, asked once per run

  // One column per run, one row per figure: a handful of runs reads side by side without scrolling.
  const ROWS = [
    ["Method", "method", (r) => facts[r.method]?.short_label || r.method || "full"],
    ["Status", "status", (r) => `${r.status} · ${r.steps} / ${r.total_steps ?? "?"} steps`],
    ["Trainable parameters", "trainable", (r) => `${fmt.int(r.trainable_parameters)} of ${fmt.int(r.total_parameters)}`],
    ["Trainable %", "trainable-percent", (r) => (r.trainable_fraction == null ? "—" : fmt.percent(100 * r.trainable_fraction))],
    ["Peak memory (measured)", "peak-memory", (r) => fmt.bytes(r.peak_memory_bytes)],
    ["Memory (estimated)", "estimated-memory", (r) => fmt.bytes(estimates[r.id])],
    ["Time", "seconds", (r) => fmt.seconds(r.seconds)],
    ["Tokens/s", "tokens-per-second", (r) => fmt.rate(r.tokens_per_second)],
    ["Final eval loss", "eval-loss", (r) => fmt.loss(r.final_eval_loss)],
    ["Final eval accuracy", "eval-accuracy", (r) => fmt.accuracy(r.final_eval_accuracy)],
    ["Output on disk", "artifact-size", (r) => fmt.bytes(r.artifact_bytes)],
  ];

  function renderTable() {
    const table = $("methods-table");
    table.replaceChildren();
    const head = table.createTHead().insertRow();
    head.append(el("th", ""));
    runs.forEach((r, i) => {
      const th = el("th", null, { scope: "col", "data-run": r.id, "data-status": r.status });
      const link = el("a", `${r.name} (#${r.id})`, { href: `/jobs/${r.id}` });
      link.style.color = COLORS[i % COLORS.length];
      th.append(link);
      head.append(th);
    });
    const body = table.createTBody();
    ROWS.forEach(([label, key, value]) => {
      const row = body.insertRow();
      row.append(el("th", label, { scope: "row" }));
      runs.forEach((r) => row.append(el("td", value(r), { "data-run": r.id, "data-col": key })));
    });
    $("methods-claims").replaceChildren(
      ...runs
        .filter((r) => r.trainable_parameters && r.trainable_fraction)
        // The share of the base's own parameters (trainable_fraction), as the estimate gave it before launch.
        .map((r) => {
          const base = r.trainable_parameters / r.trainable_fraction;
          return el("li", `${claim(r.method || "full", r.trainable_parameters, base, r.base_model)}.`);
        }),
    );
  }

  const CHART = {
    trainable_percent: (r) => (r.trainable_fraction == null ? null : 100 * r.trainable_fraction),
    final_eval_loss: (r) => r.final_eval_loss,
  };

  function draw() {
    if (typeof Chart === "undefined") return;
    const metric = $("methods-chart-metric").value;
    const label = $("methods-chart-metric").selectedOptions[0].textContent;
    if (chart) chart.destroy();
    chart = new Chart($("methods-chart"), {
      type: "bar",
      data: {
        labels: runs.map((r) => facts[r.method]?.short_label || r.method),
        datasets: [{ label, data: runs.map(CHART[metric]), backgroundColor: runs.map((_, i) => COLORS[i % COLORS.length]) }],
      },
      options: {
        animation: false, responsive: true, maintainAspectRatio: false,
        // Shares span orders of magnitude (prompt tuning's 0.001% beside full's 100%): a log axis shows them all.
        scales: { y: { type: metric === "trainable_percent" ? "logarithmic" : "linear", title: { display: true, text: label } } },
        plugins: { legend: { display: false } },
      },
    });
  }

  async function estimateRun(id) {
    try {
      const job = await Studio.fetchJSON(`/api/jobs/${id}`);
      const body = {
        kind: job.kind, dataset_id: job.dataset_id, base_model: job.base_model_id, method: job.method,
        objective: job.objective, method_config: job.method_config, objective_config: job.objective_config,
        hyperparameters: job.hyperparameters, validation_dataset_id: job.validation_dataset_id,
      };
      estimates[id] = (await Studio.fetchJSON("/api/jobs/estimate", { method: "POST", body })).memory_bytes;
    } catch (err) {
      estimates[id] = null; // shown as "—": the table's measured figures do not depend on it
    }
  }

  async function refresh(first) {
    const table = $("methods-table");
    try {
      const body = await Studio.fetchJSON(`/api/jobs/compare?${ids.map((id) => `ids=${id}`).join("&")}`);
      runs = body.runs;
      if (first) await Promise.all(ids.map(estimateRun));
      renderTable();
      draw();
    } catch (err) {
      if (first) {
        Studio.showError($("methods-results-error"), `Could not load these runs: ${err.message}`);
        table.dataset.live = "closed";
        return;
      }
    }
    // Runs still training: ask again shortly, until every one has ended.
    const live = !runs.length || runs.some((r) => !FINAL.has(r.status));
    table.dataset.live = live ? "open" : "closed";
    if (live) setTimeout(() => refresh(false), POLL_MS);
  }

  $("methods-chart-metric").addEventListener("change", draw);
  refresh(true);
})();

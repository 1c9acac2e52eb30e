// Compare page: overlaid curves of the picked runs on a chosen x axis, a side-by-side summary and a settings diff.
"use strict";

(function () {
  const $ = (id) => document.getElementById(id);
  const ids = JSON.parse($("compare-ids").textContent);
  if (!ids.length) return;
  const COLORS = ["#4f7cff", "#e8833a", "#2bb673", "#c94fd1", "#d64545", "#1fb5c9", "#8a8f2a", "#7a5cff"];
  let runs = [];
  let chart = null;

  const fmt = {
    int: (v) => (v == null ? "—" : Math.round(v).toLocaleString()),
    loss: (v) => (v == null ? "—" : v.toFixed(4)),
    sci: (v) => (v == null ? "—" : Number(v).toExponential(2)),
    seconds: (v) => (v == null ? "—" : v < 120 ? `${v.toFixed(1)} s` : `${(v / 60).toFixed(1)} min`),
    bytes: (v) => (v == null ? "—" : Studio.formatBytes ? Studio.formatBytes(v) : `${v} B`),
    text: (v) => (v == null || v === "" ? "—" : String(v)),
  };

  // Rows of the summary table: [label, value of a run].
  const ROWS = [
    ["Kind", (r) => fmt.text(r.kind)],
    ["Method", (r) => fmt.text(r.method)],
    ["Objective", (r) => fmt.text(r.objective)],
    ["Starts from", (r) => (r.kind === "pretrain" ? `random weights (${r.architecture})` : fmt.text(r.base_model))],
    ["Tokenizer", (r) => fmt.text(r.tokenizer)],
    ["Dataset", (r) => fmt.text(r.dataset)],
    ["Records", (r) => fmt.int(r.dataset_records)],
    ["Dataset size", (r) => fmt.bytes(r.dataset_bytes)],
    ["Trainable / total parameters", (r) => `${fmt.int(r.trainable_parameters)} / ${fmt.int(r.total_parameters)}`],
    ["Steps", (r) => fmt.int(r.steps)],
    ["Tokens trained on", (r) => fmt.int(r.tokens)],
    ["Training FLOPs", (r) => fmt.sci(r.flops)],
    ["Wall time", (r) => fmt.seconds(r.seconds)],
    ["Tokens per second", (r) => fmt.int(r.tokens_per_second)],
    ["Peak memory", (r) => fmt.bytes(r.peak_memory_bytes)],
    ["Final training loss", (r) => fmt.loss(r.final_loss)],
    ["Final validation loss", (r) => fmt.loss(r.final_eval_loss)],
    ["Best validation loss", (r) => fmt.loss(r.best_eval_loss)],
    ["Validation bits per byte", (r) => fmt.loss(r.final_eval_bits_per_byte)],
    ["Validation accuracy", (r) => (r.final_eval_accuracy == null ? "—" : `${(100 * r.final_eval_accuracy).toFixed(1)}%`)],
    ["Output on disk", (r) => fmt.bytes(r.artifact_bytes)],
  ];

  function cell(tag, text, attrs = {}) {
    const el = document.createElement(tag);
    el.textContent = text;
    Object.entries(attrs).forEach(([k, v]) => el.setAttribute(k, v));
    return el;
  }

  function renderSummary() {
    const table = $("compare-summary");
    table.replaceChildren(); // drawn again as live runs move on
    const head = table.createTHead().insertRow();
    head.append(cell("th", ""));
    runs.forEach((r, i) => {
      const th = cell("th", "", { scope: "col" });
      const link = cell("a", `${r.name} (#${r.id})`, { href: `/jobs/${r.id}` });
      link.style.color = COLORS[i % COLORS.length];
      th.append(link);
      head.append(th);
    });
    const body = table.createTBody();
    ROWS.forEach(([label, value]) => {
      const row = body.insertRow();
      row.append(cell("th", label, { scope: "row" }));
      runs.forEach((r) => row.append(cell("td", value(r))));
    });
  }

  // The trade-off in words when a from-scratch run sits beside a fine-tuned one. Their tokenizers differ, so a
  // loss per token is not like for like: bits per byte of the validation text is, when both runs logged it.
  function renderVerdict() {
    const scratch = runs.find((r) => r.kind === "pretrain" && r.final_eval_loss != null);
    const tuned = runs.find((r) => r.kind === "finetune" && r.final_eval_loss != null);
    if (!scratch || !tuned) return;
    const ratio = (a, b) => (a && b ? `${(a / b).toFixed(1)}×` : "?");
    const bpb = scratch.final_eval_bits_per_byte != null && tuned.final_eval_bits_per_byte != null;
    const result = (r) =>
      bpb
        ? `${fmt.loss(r.final_eval_bits_per_byte)} bits per byte of validation text`
        : `validation loss ${fmt.loss(r.final_eval_loss)}`;
    const box = $("compare-verdict");
    box.textContent =
      `Pretrain vs fine-tune: "${scratch.name}" reached ${result(scratch)} from random weights with ` +
      `${fmt.int(scratch.tokens)} tokens, ${fmt.sci(scratch.flops)} FLOPs and ${fmt.seconds(scratch.seconds)}; ` +
      `"${tuned.name}" reached ${result(tuned)} from ${tuned.base_model} with ${fmt.int(tuned.tokens)} tokens, ` +
      `${fmt.sci(tuned.flops)} FLOPs and ${fmt.seconds(tuned.seconds)}. The from-scratch run used ` +
      `${ratio(scratch.tokens, tuned.tokens)} the tokens, ${ratio(scratch.flops, tuned.flops)} the FLOPs and ` +
      `${ratio(scratch.seconds, tuned.seconds)} the time of the fine-tune.` +
      (bpb
        ? ""
        : " Their tokenizers differ, so losses per token are not like for like; bits per byte (logged by runs " +
          "with a validation set) would be.") +
      (scratch.dataset !== tuned.dataset
        ? " They were measured on different datasets, so their losses are not directly comparable: train both on " +
          "the same target data for a like-for-like answer."
        : "");
    box.hidden = false;
  }

  function renderDiff(diff) {
    const table = $("compare-diff");
    const keys = Object.keys(diff);
    if (!keys.length) {
      table.replaceWith(cell("p", "These runs have the same settings.", { class: "muted" }));
      return;
    }
    const head = table.createTHead().insertRow();
    head.append(cell("th", "Setting", { scope: "col" }));
    runs.forEach((r) => head.append(cell("th", `#${r.id}`, { scope: "col" })));
    const body = table.createTBody();
    keys.forEach((key) => {
      const row = body.insertRow();
      const label = key.startsWith("hyperparameters.") ? key.slice("hyperparameters.".length) : key.replaceAll("_", " ");
      row.append(cell("th", label, { scope: "row" }));
      // Names (datasets, models) read as they are; numbers and lists as JSON.
      diff[key].forEach((v) => row.append(cell("td", v == null ? "—" : typeof v === "string" ? v : JSON.stringify(v))));
    });
  }

  function datasets() {
    const x = $("compare-x").value;
    const y = $("compare-y").value;
    return runs.map((r, i) => ({
      label: `${r.name} (#${r.id})`,
      data: r.curve
        .filter((p) => p[x] != null && p.values[y] != null)
        .map((p) => ({ x: x === "step" ? p.step : p[x], y: p.values[y] })),
      borderColor: COLORS[i % COLORS.length],
      backgroundColor: COLORS[i % COLORS.length],
      borderWidth: 2,
      pointRadius: y.startsWith("eval_") ? 3 : 0,
    }));
  }

  function draw() {
    if (typeof Chart === "undefined") return;
    const xLabel = $("compare-x").selectedOptions[0].textContent;
    const log = $("compare-log").checked;
    if (chart) chart.destroy();
    chart = new Chart($("compare-chart"), {
      type: "line",
      data: { datasets: datasets() },
      options: {
        parsing: false, animation: false, responsive: true, maintainAspectRatio: false,
        interaction: { mode: "nearest", axis: "x", intersect: false },
        scales: {
          x: { type: log && $("compare-x").value !== "step" ? "logarithmic" : "linear", title: { display: true, text: xLabel } },
          y: { type: log ? "logarithmic" : "linear", title: { display: true, text: $("compare-y").selectedOptions[0].textContent } },
        },
        plugins: { legend: { position: "bottom" } },
      },
    });
    $("compare-chart").dataset.runs = String(runs.length);
  }

  async function load(again = false) {
    const query = ids.map((id) => `ids=${encodeURIComponent(id)}`).join("&");
    try {
      const body = await Studio.fetchJSON(`/api/jobs/compare?${query}`);
      runs = body.runs;
      renderSummary();
      renderVerdict();
      if (!again) {
        renderDiff(body.diff); // settings are frozen at launch: the diff never changes
        // Runs with different tokenizers open on bits per byte: their losses per token are not like for like.
        $("compare-y").value = body.first_curve;
        $("compare-y").dataset.first = body.first_curve;
      }
      draw();
    } catch (err) {
      if (again) return; // a live refresh that failed keeps what is drawn; the next one tries again
      // Nothing to draw: say why in words, and leave no empty chart or table behind.
      Studio.showError($("compare-error"), `Could not compare these runs: ${err.message}`);
      ["compare-chart-card", "compare-diff-card"].forEach((id) => ($(id).hidden = true));
    }
  }

  // Runs still training: follow the jobs list's stream and fetch the comparison again (at most every 2 s) when
  // one of them moves, so their curves grow live; the stream is closed once every run has ended.
  const FINAL = new Set(["succeeded", "failed", "cancelled"]);
  const REFRESH_MS = 2000;
  function follow() {
    const chartEl = $("compare-chart");
    if (!runs.length || runs.every((r) => FINAL.has(r.status))) return;
    const wanted = new Set(ids.map(Number));
    const source = new EventSource("/api/jobs/stream");
    let timer = null;
    chartEl.dataset.live = "open";
    source.addEventListener("job", (e) => {
      const job = JSON.parse(e.data);
      const status = document.querySelector(`.pick-status[data-job-id="${Number(job.id)}"]`);
      if (status) status.textContent = job.status;
      if (!wanted.has(Number(job.id)) || timer) return;
      timer = setTimeout(async () => {
        await load(true);
        timer = null;
        if (runs.every((r) => FINAL.has(r.status))) {
          source.close();
          chartEl.dataset.live = "closed";
        }
      }, REFRESH_MS);
    });
  }

  ["compare-x", "compare-y", "compare-log"].forEach((id) => $(id).addEventListener("change", draw));
  load().then(follow);
})();

// Job page charts: the loss chart and one panel per logged quantity, with one set of view controls (log scale,
// EMA smoothing, drag-to-zoom or a typed step range). job.js feeds the points from its EventSource.
"use strict";

window.StudioJobCharts = (function () {
  const $ = (id) => document.getElementById(id);

  /* ---------- chart view: log scale, smoothing and zoom, shared by the loss chart and every metric panel ---------- */

  const VIEW_KEY = "studio.chartView";
  const view = { log: false, smoothing: 0.6, zoom: null }; // zoom: [min step, max step] or null
  try {
    Object.assign(view, JSON.parse(localStorage.getItem(VIEW_KEY) || "{}"), { zoom: null });
  } catch (err) {
    /* a bad stored value: keep the defaults */
  }

  // TensorBoard's smoothing: an exponential moving average, debiased so the first points are not pulled to 0.
  function smooth(points, weight, out) {
    out.length = 0;
    let last = 0;
    let norm = 0;
    for (const p of points) {
      last = last * weight + (1 - weight) * p.y;
      norm = norm * weight + (1 - weight);
      out.push({ x: p.x, y: weight > 0 ? last / norm : p.y });
    }
    return out;
  }

  // A log axis cannot show 0 or negatives (a reward margin, say): such a chart stays linear.
  function logFits(...arrays) {
    return arrays.every((a) => a.every((p) => p.y > 0));
  }

  function applyView(c, logOk) {
    if (!c) return;
    const x = c.options.scales.x;
    [x.min, x.max] = view.zoom || [undefined, undefined];
    c.options.scales.y.type = view.log && logOk ? "logarithmic" : "linear";
    c.data.datasets.forEach((ds) => {
      if (ds.role === "raw") ds.hidden = view.smoothing === 0; // the faint raw curve, behind the smoothed one
    });
  }

  // The raw curve behind a smoothed one: the same colour at a quarter of the opacity.
  function fade(color) {
    const hex = /^#([0-9a-f]{6})$/i.exec(color);
    if (!hex) return "rgba(128, 128, 128, 0.3)";
    const n = parseInt(hex[1], 16);
    return `rgba(${n >> 16}, ${(n >> 8) & 255}, ${n & 255}, 0.3)`;
  }

  // Drag across a chart to zoom every chart to that step range; the selection is drawn by this plugin.
  const dragZoom = {
    id: "dragZoom",
    afterDatasetsDraw(c) {
      const drag = c.$drag;
      if (!drag || drag.to == null) return;
      const { top, bottom } = c.chartArea;
      c.ctx.save();
      c.ctx.fillStyle = "rgba(100, 130, 255, 0.15)";
      c.ctx.fillRect(Math.min(drag.from, drag.to), top, Math.abs(drag.to - drag.from), bottom - top);
      c.ctx.restore();
    },
  };

  function clampToArea(c, px) {
    return Math.min(Math.max(px, c.chartArea.left), c.chartArea.right);
  }

  function enableDragZoom(target) {
    const c = () => Chart.getChart(target);
    target.addEventListener("pointerdown", (e) => {
      const chartNow = c();
      if (!chartNow || e.button !== 0) return;
      const { left, right, top, bottom } = chartNow.chartArea;
      if (e.offsetX < left || e.offsetX > right || e.offsetY < top || e.offsetY > bottom) return;
      chartNow.$drag = { from: e.offsetX, to: null };
      target.setPointerCapture(e.pointerId);
    });
    target.addEventListener("pointermove", (e) => {
      const chartNow = c();
      if (!chartNow || !chartNow.$drag) return;
      chartNow.$drag.to = clampToArea(chartNow, e.offsetX);
      chartNow.draw();
    });
    const end = (e) => {
      const chartNow = c();
      if (!chartNow || !chartNow.$drag) return;
      const { from, to } = chartNow.$drag;
      chartNow.$drag = null;
      if (to != null && Math.abs(to - from) >= 5) {
        const scale = chartNow.scales.x;
        const a = scale.getValueForPixel(from);
        const b = scale.getValueForPixel(clampToArea(chartNow, e.offsetX ?? to));
        setZoom([Math.floor(Math.min(a, b)), Math.ceil(Math.max(a, b))]);
      } else {
        chartNow.draw();
      }
    };
    target.addEventListener("pointerup", end);
    target.addEventListener("pointercancel", end);
  }

  function setZoom(range) {
    view.zoom = range && range[1] > range[0] ? range : null;
    $("chart-zoom-from").value = view.zoom ? view.zoom[0] : "";
    $("chart-zoom-to").value = view.zoom ? view.zoom[1] : "";
    $("chart-reset-zoom").disabled = !view.zoom;
    $("chart-zoom-state").textContent = view.zoom ? `Steps ${view.zoom[0]}–${view.zoom[1]}` : "";
    redrawAll();
  }

  function saveView() {
    try {
      localStorage.setItem(VIEW_KEY, JSON.stringify({ log: view.log, smoothing: view.smoothing }));
    } catch (err) {
      /* private mode: the view just is not remembered */
    }
  }

  function initControls() {
    const log = $("chart-log");
    const smoothing = $("chart-smoothing");
    log.checked = view.log;
    smoothing.value = view.smoothing;
    $("chart-smoothing-value").textContent = Number(view.smoothing).toFixed(2);
    log.addEventListener("change", () => {
      view.log = log.checked;
      saveView();
      redrawAll();
    });
    smoothing.addEventListener("input", () => {
      view.smoothing = Number(smoothing.value);
      $("chart-smoothing-value").textContent = view.smoothing.toFixed(2);
      saveView();
      redrawAll();
    });
    $("chart-reset-zoom").addEventListener("click", () => setZoom(null));
    const typed = () => {
      const a = $("chart-zoom-from").value;
      const b = $("chart-zoom-to").value;
      if (a !== "" && b !== "") setZoom([Number(a), Number(b)]);
    };
    $("chart-zoom-from").addEventListener("change", typed);
    $("chart-zoom-to").addEventListener("change", typed);
    $("chart-reset-zoom").disabled = true;
  }

  /* ---------- the loss chart ---------- */

  const canvas = $("loss-chart");
  const seenMetrics = new Set();
  const series = { loss: [], eval_loss: [], learning_rate: [] };
  const smoothedLoss = [];
  // A fine-tune's evaluation before its first step (step 0): the base model's eval loss, drawn as a marked point
  // and a dashed level across the run, so the eval curve shows at a glance whether fine-tuning beat the base.
  const baseline = [];
  const BASE_LABEL = "Base model (before training)";

  // Step 0 is the base model's evaluation; a tooltip says so instead of a bare "step 0".
  function stepTitle(items) {
    const x = items[0].parsed.x;
    return x === 0 ? "step 0: the base model, before training" : `step ${x}`;
  }
  let chart = null;
  let redrawPending = false;

  function cssVar(name) {
    return getComputedStyle(document.documentElement).getPropertyValue(name).trim();
  }

  function line(label, data, color, extra) {
    return {
      label, data, borderColor: color, backgroundColor: color, borderWidth: 2, pointRadius: 0,
      cubicInterpolationMode: "monotone", // smooth without overshooting the logged values
      ...extra,
    };
  }

  function makeChart() {
    if (typeof Chart === "undefined") return null;
    Chart.defaults.color = cssVar("--muted");
    Chart.defaults.borderColor = cssVar("--border");
    Chart.defaults.font.family = getComputedStyle(document.body).fontFamily;
    const accent = cssVar("--accent");
    return new Chart(canvas, {
      type: "line",
      plugins: [dragZoom],
      data: {
        datasets: [
          line("Training loss", smoothedLoss, accent, { yAxisID: "y", role: "smoothed" }),
          line("Training loss (raw)", series.loss, fade(accent), {
            yAxisID: "y", role: "raw", borderWidth: 1, cubicInterpolationMode: "default",
          }),
          line("Eval loss", series.eval_loss, "#e8833a", { yAxisID: "y", pointRadius: 3 }),
          line(BASE_LABEL, baseline, "#2bb673", {
            yAxisID: "y", borderWidth: 1.5, borderDash: [2, 3], pointStyle: "rectRot",
            pointRadius: (ctx) => (ctx.dataIndex === 0 ? 7 : 0), role: "baseline",
          }),
          line("Learning rate", series.learning_rate, cssVar("--muted"), {
            yAxisID: "lr", borderWidth: 1.5, borderDash: [5, 4],
          }),
        ],
      },
      options: {
        parsing: false,
        animation: false,
        responsive: true,
        maintainAspectRatio: false,
        interaction: { mode: "nearest", axis: "x", intersect: false },
        scales: {
          x: { type: "linear", title: { display: true, text: "step" }, ticks: { precision: 0 } },
          y: { type: "linear", position: "left", title: { display: true, text: "loss" } },
          lr: {
            type: "linear", position: "right", beginAtZero: true, grid: { drawOnChartArea: false },
            title: { display: true, text: "learning rate" },
            ticks: { callback: (v) => (v === 0 ? "0" : Number(v).toExponential(1)) },
          },
        },
        plugins: {
          legend: {
            position: "bottom",
            labels: { usePointStyle: true, boxHeight: 6, filter: (item, data) => data.datasets[item.datasetIndex].role !== "raw" },
          },
          tooltip: {
            callbacks: {
              title: stepTitle,
              label: (item) => {
                const v = item.parsed.y;
                return `${item.dataset.label}: ${item.dataset.yAxisID === "lr" ? v.toExponential(2) : v.toFixed(4)}`;
              },
            },
          },
        },
      },
    });
  }

  function insertSorted(points, point) {
    // Metrics arrive in step order; a restarted run may repeat steps, so keep the array sorted.
    let i = points.length;
    while (i > 0 && points[i - 1].x > point.x) i -= 1;
    points.splice(i, 0, point);
  }

  /* ---------- every other metric: one small chart per quantity, train and eval on the same panel ---------- */

  // Panels shown first, in this order; anything else a recipe logs lands under "More metrics".
  const PANELS = [
    ["token_accuracy", "Token accuracy (eval)"],
    ["perplexity", "Perplexity (eval)"],
    ["accuracy", "Accuracy (eval)"],
    ["f1", "Macro F1 (eval)"],
    ["rewards/accuracies", "Reward accuracy"],
    ["rewards/margins", "Reward margin"],
    // DPO: the pair's chosen and rejected answers; KTO logs its desirable and undesirable answers under the same
    // names, with its KL estimate (the reference point each reward is measured from) as "kl".
    ["rewards/chosen", "Reward of chosen / desirable"],
    ["rewards/rejected", "Reward of rejected / undesirable"],
    ["kl", "KL estimate (KTO's reference point)"],
    ["logps/chosen", "Log-prob of chosen / desirable"],
    ["logps/rejected", "Log-prob of rejected / undesirable"],
    ["grad_norm", "Gradient norm"],
    ["tokens_per_second", "Tokens per second"],
    ["mfu", "Model FLOPs utilisation (of the worker's peak matmul)"],
    ["model_tflops", "Model TFLOP/s"],
    ["supervised_tokens", "Supervised tokens seen"],
    ["tokens_seen", "Tokens seen"],
    ["memory_mb", "Memory (MB)"],
  ];
  const PANEL_TITLES = new Map(PANELS);
  // Not worth a chart: the main chart's series, the epoch (the x axis says as much), eval timing noise and how many
  // held-out examples an evaluation read.
  const SKIP = new Set(["loss", "learning_rate", "epoch", "runtime", "samples_per_second", "steps_per_second", "examples"]);
  const panels = new Map(); // quantity → { train: [], smoothed: [], eval: [], chart, canvas, value }

  function quantity(key) {
    const evalKey = key.startsWith("eval_");
    return { name: evalKey ? key.slice(5) : key, evalKey };
  }

  function makePanel(name) {
    const known = PANEL_TITLES.has(name);
    const grid = known ? $("metric-panels") : $("metric-panels-more");
    const figure = document.createElement("figure");
    figure.className = "chart-figure";
    figure.dataset.metric = name;
    const caption = document.createElement("figcaption");
    caption.textContent = PANEL_TITLES.get(name) || name;
    const value = document.createElement("span");
    value.className = "muted small metric-latest";
    caption.append(" ", value);
    const box = document.createElement("div");
    box.className = "chart-box chart-small";
    const panelCanvas = document.createElement("canvas");
    panelCanvas.setAttribute("role", "img");
    panelCanvas.setAttribute("aria-label", `${caption.textContent} by step`);
    box.append(panelCanvas);
    figure.append(caption, box);
    // Keep the known panels in PANELS order however the metrics arrive.
    const order = PANELS.findIndex(([k]) => k === name);
    const after = [...grid.children].find((el) => PANELS.findIndex(([k]) => k === el.dataset.metric) > order);
    grid.insertBefore(figure, known ? after || null : null);
    $("metric-panels-card").hidden = false;
    if (!known) $("metric-panels-more-wrap").hidden = false;
    const panel = { train: [], smoothed: [], eval: [], chart: null, canvas: panelCanvas, value };
    panels.set(name, panel);
    enableDragZoom(panelCanvas);
    return panel;
  }

  function panelChart(panel) {
    if (typeof Chart === "undefined") return null;
    const accent = cssVar("--accent");
    return new Chart(panel.canvas, {
      type: "line",
      plugins: [dragZoom],
      data: {
        datasets: [
          line("train", panel.smoothed, accent, { role: "smoothed" }),
          line("train (raw)", panel.train, fade(accent), { role: "raw", borderWidth: 1 }),
          line("eval", panel.eval, "#e8833a", { pointRadius: 3 }),
        ],
      },
      options: {
        parsing: false, animation: false, responsive: true, maintainAspectRatio: false,
        interaction: { mode: "nearest", axis: "x", intersect: false },
        scales: {
          x: { type: "linear", title: { display: true, text: "step" }, ticks: { precision: 0 } },
          y: { type: "linear" },
        },
        plugins: {
          legend: { display: false },
          tooltip: { callbacks: { title: stepTitle } },
        },
      },
    });
  }

  function addPanelPoint(key, step, y) {
    const { name, evalKey } = quantity(key);
    if (SKIP.has(name)) return;
    const panel = panels.get(name) || makePanel(name);
    insertSorted(evalKey ? panel.eval : panel.train, { x: step, y });
    panel.dirty = true;
  }

  function formatValue(y) {
    if (Math.abs(y) >= 1000) return Math.round(y).toLocaleString();
    return Number(y.toPrecision(4)).toString();
  }

  function redrawPanels(all) {
    for (const panel of panels.values()) {
      if (!panel.dirty && !all) continue;
      panel.dirty = false;
      panel.chart = panel.chart || panelChart(panel);
      smooth(panel.train, view.smoothing, panel.smoothed);
      applyView(panel.chart, logFits(panel.train, panel.eval));
      if (panel.chart) panel.chart.update("none");
      const last = [...panel.train.slice(-1), ...panel.eval.slice(-1)].sort((a, b) => a.x - b.x).pop();
      panel.value.textContent = last ? `${formatValue(last.y)} at step ${last.x}` : "";
    }
  }

  function addMetric(metric) {
    if (seenMetrics.has(metric.id)) return;
    seenMetrics.add(metric.id);
    for (const [key, y] of Object.entries(metric.values)) {
      if (typeof y !== "number" || !Number.isFinite(y)) continue;
      if (key in series) insertSorted(series[key], { x: metric.step, y });
      else addPanelPoint(key, metric.step, y);
    }
    if (metric.step === 0 && typeof metric.values.eval_loss === "number") {
      baseline.length = 0;
      baseline.push({ x: 0, y: metric.values.eval_loss });
      canvas.dataset.baseEval = String(metric.values.eval_loss);
    }
    canvas.dataset.points = String(seenMetrics.size);
    $("chart-empty").hidden = true;
    scheduleRedraw();
  }

  // Forget every point (a resume from an older checkpoint dropped some on the server); the stream replays the rest.
  function resetCharts() {
    seenMetrics.clear();
    Object.values(series).forEach((points) => (points.length = 0));
    smoothedLoss.length = 0;
    baseline.length = 0;
    delete canvas.dataset.baseEval;
    for (const panel of panels.values()) {
      panel.train.length = 0;
      panel.smoothed.length = 0;
      panel.eval.length = 0;
      panel.dirty = true;
    }
    canvas.dataset.points = "0";
    redrawAll();
  }

  function redrawMain() {
    chart = chart || makeChart();
    smooth(series.loss, view.smoothing, smoothedLoss);
    // The base model's level runs on to the newest step, so every later eval point sits against it.
    const newest = Math.max(...[series.loss, series.eval_loss].map((points) => (points.length ? points[points.length - 1].x : 0)));
    if (baseline.length) baseline.splice(1, baseline.length - 1, ...(newest > 0 ? [{ x: newest, y: baseline[0].y }] : []));
    applyView(chart, logFits(series.loss, series.eval_loss));
    if (chart) chart.update("none");
  }

  function redrawAll() {
    redrawMain();
    redrawPanels(true);
  }

  function scheduleRedraw() {
    if (redrawPending) return;
    redrawPending = true;
    // Batch a replay of thousands of points into one draw per frame.
    requestAnimationFrame(() => {
      redrawPending = false;
      redrawMain();
      redrawPanels(false);
      const last = series.loss[series.loss.length - 1];
      const lastEval = series.eval_loss[series.eval_loss.length - 1];
      $("chart-summary").textContent = [
        last ? `loss ${last.y.toFixed(4)} at step ${last.x}` : "",
        lastEval ? `eval ${lastEval.y.toFixed(4)}` : "",
        baseline.length ? `base model ${baseline[0].y.toFixed(4)}` : "",
      ].filter(Boolean).join(" · ");
    });
  }

  initControls();
  enableDragZoom(canvas);

  // The step of the last training-loss point (0 before the first): a resume asks before discarding later ones.
  function lastStep() {
    return series.loss.length ? series.loss[series.loss.length - 1].x : 0;
  }

  return { addMetric, resetCharts, lastStep };
})();

// Job page: one EventSource feeds the status, progress, loss chart and event log.
// The curves' history comes from the metrics API (a long run's thinned to what a chart shows, every bucket's
// extremes kept); the stream then replays only the points after the newest one it held, and follows live.
"use strict";

(function () {
  const ACTIVE = new Set(["queued", "running"]);
  const CANCELLABLE = new Set(["queued", "running", "paused"]);
  const RESUMABLE = new Set(["paused", "failed", "cancelled"]);
  const $ = (id) => document.getElementById(id);
  let job = JSON.parse($("job-data").textContent);
  let source = null;
  let etaAnchor = null; // [eta_seconds, Date.now()] of the last snapshot, counted down locally
  // Resume needs a checkpoint: without one, Clone is what starts the job over. The page knew at render time;
  // the checkpoints list keeps it current.
  let hasCheckpoint = $("job-resume").dataset.checkpoint === "yes";
  // Steps a queued job will take (max_steps or the launch estimate) until the worker reports its own count.
  const planned = Number($("job-progress").dataset.planned) || null;

  const charts = window.StudioJobCharts; // job_charts.js: the loss chart and one panel per logged quantity

  /* ---------- job snapshot ---------- */

  function setTime(cell, iso) {
    cell.replaceChildren(iso ? Studio.timeElement(iso) : "—");
  }

  function renderJob(next) {
    job = next;
    Studio.setBadge($("job-status"), job.status);
    document.title = `${job.name} (${job.status}) · Fine-Tuning Studio`;

    const active = ACTIVE.has(job.status);
    const cancel = $("job-cancel");
    cancel.hidden = !CANCELLABLE.has(job.status);
    cancel.disabled = job.cancel_requested && job.status !== "paused";
    cancel.textContent = cancel.disabled ? "Cancelling…" : "Cancel job";
    const pause = $("job-pause");
    pause.hidden = job.status !== "running" || job.cancel_requested;
    pause.disabled = job.pause_requested;
    pause.textContent = job.pause_requested ? "Pausing…" : "Pause";
    syncResumable();
    $("job-playground").hidden = job.status !== "succeeded";

    const progress = $("job-progress");
    const total = job.total_steps ?? planned;
    progress.dataset.step = job.current_step;
    progress.dataset.total = total ?? "";
    $("job-step").textContent = job.current_step;
    $("job-total").textContent = total ?? "?";
    const bar = $("job-progress-bar");
    bar.max = total || 1;
    bar.value = total ? Math.min(job.current_step, total) : 0;
    etaAnchor = job.eta_seconds != null ? [job.eta_seconds, Date.now()] : null;
    tick();

    Studio.showError($("job-error"), job.error || "");
    // Placement says why a queued job is on no worker yet (none fits, all busy, the per-user limit).
    const waiting = job.status === "queued" ? job.waiting_reason || "" : "";
    $("job-waiting-reason").textContent = waiting;
    $("job-waiting").hidden = !waiting;
    $("job-final-loss").textContent = Studio.formatLoss(job.final_loss);
    $("job-final-loss-label").textContent = active ? "Latest loss" : "Final loss";
    $("job-final-eval-loss").textContent = Studio.formatLoss(job.final_eval_loss);
    $("job-device").textContent = job.device || "—";
    $("job-worker").textContent = job.worker || "—";
    // Each worker start is an attempt; a lost worker's job comes back queued until attempt_limit.
    $("job-attempt").textContent = job.attempt ? `${job.attempt} (up to ${job.attempt_limit})` : "—";
    setTime($("job-started"), job.started_at);
    setTime($("job-finished"), job.finished_at);
    if (job.output_model_id) {
      const link = document.createElement("a");
      link.href = `/models/${job.output_model_id}`;
      link.textContent = `Model ${job.output_model_id}`;
      $("job-output-model").replaceChildren(link);
    }
    // The run's settings as the API takes them: general ones, then the method's and the objective's own.
    const settings = {
      hyperparameters: job.hyperparameters,
      method: job.method,
      method_config: job.method_config,
      objective: job.objective,
      objective_config: job.objective_config,
    };
    $("job-hyperparameters-json").textContent = JSON.stringify(settings, null, 2);
    $("job-resolved-config-json").textContent = Object.keys(job.resolved_config || {}).length
      ? JSON.stringify(job.resolved_config, null, 2)
      : "Written by the worker when training starts.";
  }

  function tick() {
    const end = job.finished_at ? Date.parse(job.finished_at) : Date.now();
    $("job-elapsed").textContent = job.started_at
      ? Studio.formatDuration((end - Date.parse(job.started_at)) / 1000)
      : "—";
    $("job-eta").textContent = etaAnchor && job.status === "running"
      ? Studio.formatDuration(etaAnchor[0] - (Date.now() - etaAnchor[1]) / 1000)
      : job.status === "succeeded" ? "done" : "—";
  }

  /* ---------- events log ---------- */

  const log = $("job-events");
  const seenEvents = new Set();

  function addEvent(event) {
    if (seenEvents.has(event.id)) return;
    seenEvents.add(event.id);
    const atBottom = log.scrollHeight - log.scrollTop - log.clientHeight < 40;
    const item = document.createElement("li");
    const level = (event.level || "info").toLowerCase();
    item.className = `level-${level}`;
    item.dataset.eventId = event.id;
    const levelEl = document.createElement("span");
    levelEl.className = "event-level";
    levelEl.textContent = level;
    const message = document.createElement("span");
    message.className = "event-message";
    message.textContent = event.message;
    item.append(Studio.timeElement(event.created_at, "time"), levelEl, message);
    log.append(item);
    // The worker's overfitting warning (workers/metrics.py OverfitWatch) also stands above the charts.
    if (event.message.startsWith("Overfitting:")) {
      $("job-overfit").textContent = event.message;
      $("job-overfit").hidden = false;
    }
    if (atBottom) log.scrollTop = log.scrollHeight;
  }

  /* ---------- artifacts ---------- */

  async function loadArtifacts() {
    let items;
    try {
      items = await Studio.fetchJSON(`/api/jobs/${job.id}/artifacts`);
    } catch (err) {
      return;
    }
    const list = $("job-artifact-list");
    list.replaceChildren(
      ...items.map((a) => {
        const li = document.createElement("li");
        const link = document.createElement("a");
        link.className = "btn btn-small";
        link.href = a.url;
        link.setAttribute("download", a.name);
        link.textContent = `Download ${a.name}`;
        const size = document.createElement("span");
        size.className = "muted";
        size.textContent = Studio.formatBytes(a.size_bytes);
        const hash = document.createElement("code");
        hash.className = "hash";
        hash.title = `sha256 ${a.sha256}`;
        hash.textContent = a.sha256.slice(0, 12);
        li.append(link, size, hash);
        return li;
      }),
    );
    $("job-artifacts").hidden = items.length === 0;
  }
  // export.js announces a finished export: its zip is one more artifact.
  document.addEventListener("studio:artifacts-changed", loadArtifacts);

  /* ---------- checkpoints and watch-prompt samples ---------- */

  function item(...children) {
    const li = document.createElement("li");
    li.append(...children);
    return li;
  }

  function muted(text) {
    const span = document.createElement("span");
    span.className = "muted";
    span.textContent = text;
    return span;
  }

  async function loadCheckpoints() {
    let items;
    try {
      items = await Studio.fetchJSON(`/api/jobs/${job.id}/checkpoints`);
    } catch (err) {
      return;
    }
    const list = $("job-checkpoints");
    hasCheckpoint = items.length > 0;
    syncResumable();
    if (!items.length) {
      list.replaceChildren(item(muted("None yet.")));
      return;
    }
    list.replaceChildren(
      ...items.map((c) => {
        const name = document.createElement("strong");
        name.textContent = `step ${c.step}`;
        const resume = document.createElement("button");
        resume.type = "button";
        resume.className = "btn btn-small resume-from";
        resume.dataset.checkpoint = c.name;
        resume.dataset.step = c.step;
        resume.textContent = "Resume from here";
        resume.setAttribute("aria-label", `Resume from ${c.name}`);
        resume.addEventListener("click", () => resumeFrom(c, resume));
        const li = item(name, " ", muted(`${c.name} · ${Studio.formatBytes(c.size_bytes)} · `),
          Studio.timeElement(c.created_at, "time"), " ", resume);
        li.dataset.checkpoint = c.name;
        return li;
      }),
    );
    syncResumeButtons();
  }

  function syncResumeButtons() {
    document.querySelectorAll("#job-checkpoints .resume-from").forEach((b) => (b.hidden = !RESUMABLE.has(job.status)));
  }

  // Resume where a checkpoint exists; otherwise say so and make Clone the way on.
  function syncResumable() {
    const resumable = RESUMABLE.has(job.status);
    $("job-resume").hidden = !resumable || !hasCheckpoint;
    $("job-no-checkpoint").hidden = !resumable || hasCheckpoint;
    $("job-clone").classList.toggle("btn-primary", resumable && !hasCheckpoint);
    syncResumeButtons();
  }

  async function resumeFrom(checkpoint, button) {
    const last = charts.lastStep();
    if (last > checkpoint.step) {
      const ok = window.confirm(
        `Resume from step ${checkpoint.step}? The metrics, watch-prompt answers and checkpoints after step ` +
          `${checkpoint.step} are discarded, so the curves continue from there.`,
      );
      if (!ok) return;
    }
    button.disabled = true;
    try {
      const next = await Studio.fetchJSON(`/api/jobs/${job.id}/resume`, {
        method: "POST",
        body: { checkpoint: checkpoint.name },
      });
      renderJob(next);
      if (source) source.close();
      charts.resetCharts(); // the server dropped the later points: replay what is left
      $("job-samples").replaceChildren();
      connect();
      loadCheckpoints();
    } catch (err) {
      Studio.showError($("job-error"), `Could not resume from ${checkpoint.name}: ${err.message}`);
      button.disabled = false;
    }
  }

  async function loadSamples() {
    if (!job.watch_prompts || !job.watch_prompts.length) return;
    let items;
    try {
      items = await Studio.fetchJSON(`/api/jobs/${job.id}/samples`);
    } catch (err) {
      return;
    }
    $("job-samples").replaceChildren(
      ...items.reverse().map((s) => {
        const head = document.createElement("strong");
        head.textContent = `step ${s.step}`;
        const prompt = muted(` ${s.prompt}`);
        const output = document.createElement("pre");
        output.className = "code-block";
        output.textContent = s.output || "(empty)";
        return item(head, prompt, output);
      }),
    );
  }

  /* ---------- stream ---------- */

  function setLive(state, text) {
    const el = $("job-live");
    el.dataset.state = state;
    el.textContent = text;
  }

  function parse(e) {
    try {
      return JSON.parse(e.data);
    } catch (err) {
      return null;
    }
  }

  // The newest point id drawn (0 if none could be read: the stream then replays every point itself).
  async function loadMetrics() {
    let newest = 0;
    try {
      for (const m of await Studio.fetchJSON(`/api/jobs/${job.id}/metrics`)) {
        charts.addMetric(m);
        newest = Math.max(newest, m.id);
      }
    } catch (err) {
      /* the stream below replays from the start */
    }
    return newest;
  }

  async function connect() {
    const after = await loadMetrics();
    source = new EventSource(`/api/jobs/${job.id}/stream?after=${after}:0`);
    source.addEventListener("open", () => setLive("live", ACTIVE.has(job.status) ? "Live" : ""));
    source.addEventListener("metric", (e) => {
      const m = parse(e);
      if (m) charts.addMetric(m);
      if (m && "eval_loss" in m.values) {
        loadSamples(); // the worker stores the answers right after each eval
        loadCheckpoints();
      }
    });
    source.addEventListener("log", (e) => {
      const ev = parse(e);
      if (ev) addEvent(ev);
    });
    source.addEventListener("job", (e) => {
      const snapshot = parse(e);
      if (snapshot) renderJob(snapshot);
    });
    source.addEventListener("end", (e) => {
      source.close();
      const data = parse(e);
      if (data && data.status && data.status !== job.status) renderJob({ ...job, status: data.status });
      setLive("ended", "");
      // What the run's end changed, without a reload: checkpoints (pruned ones drop out), artifacts, answers, and
      // the export panel's sources (export.js listens).
      loadArtifacts();
      loadCheckpoints();
      loadSamples();
      document.dispatchEvent(new CustomEvent("studio:job-ended", { detail: { jobId: job.id, status: job.status } }));
    });
    source.addEventListener("error", () => {
      // CONNECTING: the browser retries by itself with Last-Event-ID; CLOSED: it gave up (e.g. logged out).
      if (source.readyState === EventSource.CLOSED) setLive("closed", "Disconnected — reload to retry");
      else setLive("reconnecting", "Reconnecting…");
    });
  }

  $("job-cancel").addEventListener("click", async () => {
    const button = $("job-cancel");
    button.disabled = true;
    button.textContent = "Cancelling…";
    try {
      renderJob(await Studio.fetchJSON(`/api/jobs/${job.id}/cancel`, { method: "POST" }));
    } catch (err) {
      Studio.showError($("job-error"), `Could not cancel: ${err.message}`);
      button.disabled = false;
      button.textContent = "Cancel job";
    }
  });

  async function control(action, button, busyText) {
    const label = button.textContent;
    button.disabled = true;
    button.textContent = busyText;
    try {
      return await Studio.fetchJSON(`/api/jobs/${job.id}/${action}`, { method: "POST" });
    } catch (err) {
      Studio.showError($("job-error"), `Could not ${action}: ${err.message}`);
      return null;
    } finally {
      button.disabled = false;
      button.textContent = label;
    }
  }

  $("job-pause").addEventListener("click", async () => {
    const next = await control("pause", $("job-pause"), "Pausing…");
    if (next) renderJob(next);
  });

  $("job-resume").addEventListener("click", async () => {
    const next = await control("resume", $("job-resume"), "Resuming…");
    if (!next) return;
    renderJob(next);
    if (source) source.close(); // the stream ended with the pause: follow the new run
    charts.resetCharts(); // points after the checkpoint were dropped on the server: replay what is left
    connect();
    loadCheckpoints();
  });

  $("job-clone").addEventListener("click", async () => {
    const clone = await control("clone", $("job-clone"), "Cloning…");
    if (clone) window.location.href = `/jobs/${clone.id}`;
  });

  renderJob(job);
  connect();
  loadArtifacts();
  loadCheckpoints();
  loadSamples();
  setInterval(() => ACTIVE.has(job.status) && tick(), 1000);
})();

// Job list: while any job is queued or running, refresh statuses and progress from /api/jobs.
"use strict";

(function () {
  const REFRESH_MS = 3000;
  const ACTIVE = new Set(["queued", "running"]);
  const table = document.getElementById("job-table");
  const tbody = table.querySelector("tbody");

  function isActive() {
    return [...tbody.rows].some((row) => ACTIVE.has(row.dataset.status));
  }

  function progressCell(job) {
    const wrap = document.createElement("div");
    wrap.className = "progress-cell";
    const bar = document.createElement("progress");
    bar.setAttribute("aria-label", "Training progress");
    const label = document.createElement("span");
    label.className = "progress-label";
    wrap.append(bar, label);
    setProgress(wrap, job);
    return wrap;
  }

  function setProgress(wrap, job) {
    const bar = wrap.querySelector("progress");
    const total = job.total_steps;
    wrap.dataset.step = job.current_step;
    wrap.dataset.total = total ?? "";
    bar.max = total || 1;
    bar.value = total ? job.current_step : 0;
    wrap.querySelector(".progress-label").textContent = `${job.current_step} / ${total ?? "?"}`;
  }

  function newRow(job) {
    const row = tbody.insertRow(0);
    row.dataset.jobId = job.id;
    const link = document.createElement("a");
    link.href = `/jobs/${job.id}`;
    link.textContent = job.name;
    const pick = document.createElement("input");
    pick.type = "checkbox";
    pick.name = "ids";
    pick.value = job.id;
    pick.setAttribute("aria-label", `Compare ${job.name}`);
    const cells = [
      pick, link, job.kind, job.method || "—", Studio.badge(job.status), progressCell(job), "",
      Studio.timeElement(job.created_at),
    ];
    const labels = ["", "", "Kind", "Method", "Status", "Progress", "Final loss", "Created"];
    const classes = ["select-cell", "cell-title", "", "", "status-cell", "progress-td", "num loss-cell", ""];
    cells.forEach((content, i) => {
      const cell = row.insertCell();
      cell.append(content);
      cell.className = classes[i];
      if (labels[i]) cell.dataset.label = labels[i];
    });
    return row;
  }

  function update(job) {
    const row = tbody.querySelector(`tr[data-job-id="${job.id}"]`) || newRow(job);
    row.dataset.status = job.status;
    const badge = row.querySelector(".status-cell .badge");
    if (badge.dataset.status !== job.status) Studio.setBadge(badge, job.status);
    setProgress(row.querySelector(".progress-cell"), job);
    row.querySelector(".loss-cell").textContent = Studio.formatLoss(job.final_loss);
  }

  async function refresh() {
    try {
      const body = await Studio.fetchJSON("/api/jobs");
      body.items
        .slice()
        .sort((a, b) => a.id - b.id) // oldest first, so new rows inserted on top keep newest-first order
        .forEach(update);
    } catch (err) {
      /* a missed refresh is retried on the next tick */
    }
    if (isActive()) setTimeout(refresh, REFRESH_MS);
  }

  if (isActive()) setTimeout(refresh, REFRESH_MS);
})();

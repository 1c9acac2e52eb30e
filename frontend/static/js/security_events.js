// Security events on the Account page (administrators): the latest events from /api/security/events, newest
// first, times in the browser's locale.
"use strict";

(function () {
  const $ = (id) => document.getElementById(id);
  const table = $("security-events-table");
  const errorBox = $("security-events-error");
  const empty = $("security-events-empty");
  const el = Studio.el;

  function cell(label, ...children) {
    const td = el("td", {}, ...children);
    td.dataset.label = label;
    return td;
  }

  function row(event) {
    const tr = el(
      "tr",
      {},
      cell("When", Studio.timeElement(event.created_at)),
      cell("Event", el("code", { textContent: event.kind })),
      cell("Email", event.email || "—"),
      cell("Client", event.client || "—"),
      cell("What happened", event.message),
    );
    tr.dataset.kind = event.kind;
    return tr;
  }

  async function load() {
    try {
      const body = await Studio.fetchJSON("/api/security/events?limit=100");
      table.querySelector("tbody").replaceChildren(...body.items.map(row));
      table.closest(".table-wrap").hidden = body.items.length === 0;
      empty.hidden = body.items.length > 0;
    } catch (err) {
      Studio.showError(errorBox, err.message);
    }
  }

  load();
})();

// Account page: your API tokens (create one and see its secret once, list, revoke) and, for administrators,
// the users (disable, enable, their tokens). Every row is drawn here from the API: the template has none.
"use strict";

(function () {
  const { el, fetchJSON, showError, timeElement } = Studio;

  const form = document.getElementById("token-form");
  const nameInput = document.getElementById("token-name");
  const daysInput = document.getElementById("token-days");
  const button = document.getElementById("token-create");
  const errorBox = document.getElementById("token-error");
  const result = document.getElementById("token-result");
  const value = document.getElementById("token-value");
  const curl = document.getElementById("token-curl");
  const copy = document.getElementById("token-copy");
  const tokenBody = document.querySelector("#token-table tbody");
  const tokenEmpty = document.getElementById("token-empty");

  function when(iso, none) {
    return iso ? timeElement(iso) : el("span", { className: "muted", textContent: none });
  }

  function expiry(token) {
    if (!token.expires_at) return when(null, "never");
    if (!token.expired) return when(token.expires_at);
    return el("span", {}, el("span", { className: "badge badge-failed", textContent: "expired" }), " ", when(token.expires_at));
  }

  // One token's row, for your own list and for an administrator's view of another user's tokens alike.
  function tokenRow(token, onRevoked, errorEl) {
    const revoke = el("button", {
      type: "button",
      className: "btn btn-small btn-danger",
      textContent: "Revoke",
      ariaLabel: `Revoke ${token.name || "token " + token.id}`,
    });
    revoke.dataset.action = "revoke";
    revoke.addEventListener("click", async () => {
      if (!window.confirm(`Revoke the token "${token.name}"? Scripts using it get 401 from now on.`)) return;
      revoke.disabled = true;
      showError(errorEl, "");
      try {
        await fetchJSON(`/api/tokens/${token.id}`, { method: "DELETE" });
        await onRevoked();
      } catch (err) {
        showError(errorEl, err.message);
        revoke.disabled = false;
      }
    });
    const row = el(
      "tr",
      {},
      el("td", { className: "cell-title", textContent: token.name || "(unnamed)" }),
      el("td", {}, when(token.created_at)),
      el("td", {}, expiry(token)),
      el("td", {}, when(token.last_used_at, "never")),
      el("td", { className: "actions" }, revoke),
    );
    row.dataset.tokenId = token.id;
    row.cells[1].dataset.label = "Created";
    row.cells[2].dataset.label = "Expires";
    row.cells[3].dataset.label = "Last used";
    return row;
  }

  // Your tokens, and (administrators) the users' table, whose token counts change with them.
  async function refresh(openId) {
    await loadTokens();
    if (admin) await loadUsers(openId);
  }

  async function loadTokens() {
    try {
      const { items } = await fetchJSON("/api/tokens");
      tokenBody.replaceChildren(...items.map((t) => tokenRow(t, () => refresh(), errorBox)));
      tokenEmpty.hidden = items.length > 0;
      tokenBody.closest(".table-wrap").hidden = items.length === 0;
    } catch (err) {
      showError(errorBox, err.message);
    }
  }

  form.addEventListener("submit", async (e) => {
    e.preventDefault();
    button.disabled = true;
    showError(errorBox, "");
    const body = { name: nameInput.value.trim() };
    if (daysInput.value) body.expires_in_days = Number(daysInput.value);
    try {
      const created = await fetchJSON("/api/tokens", { method: "POST", body });
      value.textContent = created.token;
      curl.textContent = `curl -H "Authorization: Bearer ${created.token}" ${location.origin}/api/jobs`;
      result.hidden = false;
      form.reset();
      await refresh();
    } catch (err) {
      showError(errorBox, err.message);
    } finally {
      button.disabled = false;
    }
  });

  copy.addEventListener("click", async () => {
    try {
      await navigator.clipboard.writeText(value.textContent);
      copy.textContent = "Copied";
    } catch (err) {
      // Clipboard needs a secure context; selecting the text lets the person copy it by hand.
      window.getSelection().selectAllChildren(value);
      copy.textContent = "Press Ctrl+C";
    }
    setTimeout(() => (copy.textContent = "Copy"), 2000);
  });

  // Administrators: every user, with Disable/Enable and their tokens one click away.
  const admin = document.getElementById("admin-users");
  const usersBody = admin && admin.querySelector("#users-table tbody");
  const usersError = document.getElementById("users-error");

  function status(user) {
    if (!user.disabled_at) return el("span", { className: "badge badge-succeeded", textContent: "active" });
    return el("span", {}, el("span", { className: "badge badge-failed", textContent: "disabled" }), " ", when(user.disabled_at));
  }

  async function showUserTokens(user, detail) {
    const cell = detail.cells[0];
    try {
      const { items } = await fetchJSON(`/api/users/${user.id}/tokens`);
      const reload = () => refresh(user.id);
      const table = el(
        "table",
        { className: "table table-stack" },
        el("thead", {}, el("tr", {}, ...["Name", "Created", "Expires", "Last used", ""].map((h) => el("th", { textContent: h })))),
        el("tbody", {}, ...items.map((t) => tokenRow(t, reload, usersError))),
      );
      table.setAttribute("aria-label", `API tokens of ${user.email}`);
      cell.replaceChildren(items.length ? table : el("p", { className: "muted", textContent: `${user.email} has no API tokens.` }));
    } catch (err) {
      showError(usersError, err.message);
    }
  }

  function setDisabledButton(user) {
    const disable = !user.disabled_at;
    const btn = el("button", {
      type: "button",
      className: disable ? "btn btn-small btn-danger" : "btn btn-small",
      textContent: disable ? "Disable" : "Enable",
    });
    btn.dataset.action = disable ? "disable" : "enable";
    btn.addEventListener("click", async () => {
      const question = disable
        ? `Disable ${user.email}? Their sessions and API tokens stop working at once.`
        : `Enable ${user.email} again?`;
      if (!window.confirm(question)) return;
      btn.disabled = true;
      showError(usersError, "");
      try {
        await fetchJSON(`/api/users/${user.id}/${btn.dataset.action}`, { method: "POST" });
        await loadUsers();
      } catch (err) {
        showError(usersError, err.message);
        btn.disabled = false;
      }
    });
    return btn;
  }

  function userRows(user, selfId, openId) {
    const toggle = el("button", {
      type: "button",
      className: "btn btn-small",
      textContent: `Tokens (${user.api_tokens})`,
    });
    toggle.dataset.action = "tokens";
    toggle.setAttribute("aria-expanded", "false");
    const detail = el("tr", { className: "user-tokens", hidden: true }, el("td", { colSpan: 6 }));
    toggle.addEventListener("click", async () => {
      const open = detail.hidden;
      detail.hidden = !open;
      toggle.setAttribute("aria-expanded", String(open));
      if (open) await showUserTokens(user, detail);
    });
    const actions = el("td", { className: "actions" });
    if (user.id !== selfId) actions.append(setDisabledButton(user)); // the server refuses disabling yourself too
    const row = el(
      "tr",
      {},
      el("td", { className: "cell-title", textContent: user.email }),
      el("td", { textContent: user.is_admin ? "Administrator" : "User" }),
      el("td", {}, when(user.created_at)),
      el("td", {}, status(user)),
      el("td", {}, toggle),
      actions,
    );
    row.dataset.userId = user.id;
    row.dataset.email = user.email;
    ["", "Role", "Created", "Status", "API tokens"].forEach((label, i) => label && (row.cells[i].dataset.label = label));
    if (user.id === openId) toggle.click();
    return [row, detail];
  }

  // `openId`: the user whose tokens stay expanded across the redraw (after revoking one of them).
  async function loadUsers(openId) {
    try {
      const { items } = await fetchJSON("/api/users");
      const selfId = Number(admin.dataset.selfId);
      usersBody.replaceChildren(...items.flatMap((u) => userRows(u, selfId, openId)));
    } catch (err) {
      showError(usersError, err.message);
    }
  }

  refresh();
})();

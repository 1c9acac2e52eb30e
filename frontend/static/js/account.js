// API tokens: create one, show it once with a curl example.
"use strict";

(function () {
  const form = document.getElementById("token-form");
  const nameInput = document.getElementById("token-name");
  const button = document.getElementById("token-create");
  const errorBox = document.getElementById("token-error");
  const result = document.getElementById("token-result");
  const value = document.getElementById("token-value");
  const curl = document.getElementById("token-curl");
  const copy = document.getElementById("token-copy");

  form.addEventListener("submit", async (e) => {
    e.preventDefault();
    button.disabled = true;
    Studio.showError(errorBox, "");
    try {
      const body = await Studio.fetchJSON("/api/tokens", { method: "POST", body: { name: nameInput.value.trim() } });
      value.textContent = body.token;
      curl.textContent = `curl -H "Authorization: Bearer ${body.token}" ${location.origin}/api/jobs`;
      result.hidden = false;
      nameInput.value = "";
    } catch (err) {
      Studio.showError(errorBox, err.message);
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
})();

// Dataset preview: clipped cells get a "More" button when their text overflows.
"use strict";

(function () {
  document.querySelectorAll("#dataset-rows tbody tr").forEach((row) => {
    const clips = [...row.querySelectorAll(".clip")];
    const overflowing = clips.some((c) => c.scrollHeight > c.clientHeight + 1);
    clips.forEach((c) => c.classList.toggle("fits", !overflowing));
    const button = row.querySelector(".expand-row");
    if (!overflowing || !button) return;
    button.hidden = false;
    button.addEventListener("click", () => {
      const expanded = row.classList.toggle("expanded");
      button.setAttribute("aria-expanded", String(expanded));
      button.textContent = expanded ? "Less" : "More";
    });
  });
})();

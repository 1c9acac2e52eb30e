// Starts ReDoc on /redoc (backend/security/docs.py): a file, not an inline script, for the CSP.
"use strict";

(function () {
  const root = document.getElementById("redoc");
  Redoc.init(root.dataset.openapiUrl, {}, root);
})();

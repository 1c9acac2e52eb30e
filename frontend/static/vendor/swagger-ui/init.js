// Starts Swagger UI on /docs (backend/security/docs.py): a file, not an inline script, for the CSP.
"use strict";

(function () {
  const root = document.getElementById("swagger-ui");
  window.ui = SwaggerUIBundle({
    url: root.dataset.openapiUrl,
    dom_id: "#swagger-ui",
    layout: "BaseLayout",
    deepLinking: true,
    showExtensions: true,
    showCommonExtensions: true,
    presets: [SwaggerUIBundle.presets.apis, SwaggerUIBundle.SwaggerUIStandalonePreset],
    // "Try it out" with the browser's session: echo the CSRF cookie as the middleware asks of every page.
    requestInterceptor: (request) => {
      const method = (request.method || "GET").toUpperCase();
      const token = document.cookie.split("; ").find((c) => c.startsWith("studio_csrf="));
      if (!["GET", "HEAD", "OPTIONS"].includes(method) && token) {
        request.headers["X-CSRF-Token"] = decodeURIComponent(token.split("=")[1]);
      }
      return request;
    },
  });
})();

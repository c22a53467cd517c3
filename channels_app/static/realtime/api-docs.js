// Starts Swagger UI (static/vendor/swagger-ui/) on /api/docs/ from a file rather than the inline
// script of Swagger UI's own index.html, so the page needs no 'unsafe-inline' in its CSP.
"use strict";

window.addEventListener("DOMContentLoaded", () => {
  const root = document.getElementById("swagger-ui");
  window.ui = window.SwaggerUIBundle({
    url: root.dataset.openapiUrl,
    domNode: root,
    deepLinking: true,
    // The default validator is an image from swagger.io: the page must work offline and the CSP allows no other origin.
    validatorUrl: null,
    presets: [window.SwaggerUIBundle.presets.apis],
    layout: "BaseLayout",
    defaultModelsExpandDepth: 0,
    displayRequestDuration: true,
  });
});

// Starts Swagger UI on the service's own document. A file rather than an inline script, so
// that the page's Content-Security-Policy can refuse every inline script.
window.addEventListener("DOMContentLoaded", function () {
  window.ui = SwaggerUIBundle({
    // Relative to /docs, so it names /openapi.json also behind a proxy's path prefix.
    url: "openapi.json",
    dom_id: "#swagger-ui",
    deepLinking: true,
    // Swagger UI would otherwise send the document to an online validator: the page must
    // work offline and tell nobody what it shows.
    validatorUrl: null,
    layout: "BaseLayout",
  });
});

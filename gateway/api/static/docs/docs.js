// Swagger UI over the gateway's own OpenAPI document. validatorUrl: null keeps it from sending the
// document to an outside validator; "Try it out" calls this gateway (send a key with "Authorize").
"use strict";
window.addEventListener("DOMContentLoaded", () => {
  const root = document.getElementById("swagger-ui");
  if (typeof SwaggerUIBundle === "undefined") {
    root.textContent =
      "Swagger UI is not installed beside the gateway (the swagger-ui-py package); the OpenAPI document is at /schema.";
    return;
  }
  window.ui = SwaggerUIBundle({
    url: "/schema",
    dom_id: "#swagger-ui",
    deepLinking: true,
    validatorUrl: null,
    presets: [SwaggerUIBundle.presets.apis],
    layout: "BaseLayout",
    tryItOutEnabled: false,
    persistAuthorization: false,
  });
});

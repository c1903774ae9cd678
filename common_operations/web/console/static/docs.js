// Starts Swagger UI on /docs from the vendored bundle (web/docs.py). An external file rather than
// the inline script Litestar's plugin writes, so /docs runs under a CSP of 'self' scripts only.
(function () {
  "use strict";
  var container = document.getElementById("swagger-container");
  window.ui = SwaggerUIBundle({
    url: container.dataset.specUrl,
    dom_id: "#swagger-container",
    deepLinking: true,
    showExtensions: true,
    showCommonExtensions: true,
    presets: [SwaggerUIBundle.presets.apis, SwaggerUIBundle.SwaggerUIStandalonePreset],
  });
})();

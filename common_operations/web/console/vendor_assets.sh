#!/usr/bin/env bash
# Refresh the browser assets the console and /docs serve from the package (no CDN at run time).
# Pinned versions; run from anywhere, then commit static/vendor/ (SHA256SUMS shows what changed).
#   htmx.org@2 (Zero-Clause BSD): the console's fragments; 4.x is the npm "latest" tag, so pin 2.x.
#   swagger-ui-dist (Apache-2.0): Swagger UI for /docs; 5.x renders the OpenAPI 3.1 Litestar emits.
set -euo pipefail
HTMX_VERSION=2.0.11
SWAGGER_VERSION=5.35.0
DEST="$(cd "$(dirname "$0")" && pwd)/static/vendor"
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT
(cd "$TMP" && npm pack --silent "htmx.org@$HTMX_VERSION" "swagger-ui-dist@$SWAGGER_VERSION" >/dev/null)
mkdir -p "$DEST/htmx" "$DEST/swagger-ui"
tar xzf "$TMP/htmx.org-$HTMX_VERSION.tgz" -C "$DEST/htmx" --strip-components=2 package/dist/htmx.min.js
tar xzf "$TMP/htmx.org-$HTMX_VERSION.tgz" -C "$DEST/htmx" --strip-components=1 package/LICENSE
tar xzf "$TMP/swagger-ui-dist-$SWAGGER_VERSION.tgz" -C "$DEST/swagger-ui" --strip-components=1 \
  package/swagger-ui-bundle.js package/swagger-ui-standalone-preset.js package/swagger-ui.css \
  package/LICENSE package/NOTICE
printf 'htmx.org %s\nswagger-ui-dist %s\n' "$HTMX_VERSION" "$SWAGGER_VERSION" > "$DEST/VERSIONS"
(cd "$DEST" && find . -type f ! -name SHA256SUMS | sort | xargs sha256sum > SHA256SUMS)
echo "vendored into $DEST:"
cat "$DEST/VERSIONS"

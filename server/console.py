"""The web console: a small static app served at `/`, talking to the client API.

Every asset ships in the package (`server/console/`), so the console works offline. The
pages are plain HTML and one JavaScript module; the graph is drawn in the browser by
Graphviz compiled to WebAssembly (`vendor/viz.js`, from the npm package `@viz-js/viz`).
The console holds no privilege: it sends the client token the person typed (kept in the
tab's sessionStorage) to the same `/api/v1` routes as any client.

Responses carry a strict Content-Security-Policy: scripts from this origin only (plus
WebAssembly compilation for Graphviz), no inline script or style, no other origin reachable.
"""

from __future__ import annotations

from pathlib import Path

from aiohttp import web

from server.errors import NotFound

ROOT = Path(__file__).resolve().parent / "console"

CSP = "; ".join(
    [
        "default-src 'none'",
        "script-src 'self' 'wasm-unsafe-eval'",
        "style-src 'self'",
        "img-src 'self' data:",
        "connect-src 'self'",
        "base-uri 'none'",
        "form-action 'none'",
        "frame-ancestors 'none'",
    ]
)
HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
}

#: The files served under /console/, by name: nothing else of the package is reachable.
ASSETS = {
    "app.js": "text/javascript",
    "graph.js": "text/javascript",
    "schema.js": "text/javascript",
    "app.css": "text/css",
    "vendor/viz.js": "text/javascript",
    "favicon.svg": "image/svg+xml",
}


def _file(name: str, content_type: str, cache: str) -> web.FileResponse:
    response = web.FileResponse(ROOT / name, headers={**HEADERS, "Cache-Control": cache})
    response.content_type = content_type
    return response


async def index(request: web.Request) -> web.FileResponse:
    return _file("index.html", "text/html", "no-cache")


async def asset(request: web.Request) -> web.FileResponse:
    name = request.match_info["name"]
    content_type = ASSETS.get(name)
    if content_type is None:
        raise NotFound(f"no console file {name[:100]!r}", code="not_found")
    # no-cache: the browser revalidates (ETag / Last-Modified), so an upgrade shows at once.
    return _file(name, content_type, "no-cache")


def add_console(app: web.Application) -> None:
    app.router.add_get("/", index)
    app.router.add_get("/console/{name:.+}", asset)

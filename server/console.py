"""The web console: a small static app served at `/`, talking to the client API.

Every asset ships in the package (`server/console/`), so the console works offline. The
pages are plain HTML and three small JavaScript modules; the graph is drawn in the browser by
Graphviz compiled to WebAssembly (`vendor/viz.js`, from the npm package `@viz-js/viz`).
The console holds no privilege: it sends the client token the person typed (kept in the
tab's sessionStorage) to the same `/api/v1` routes as any client.

Responses carry a strict Content-Security-Policy: scripts from this origin only (plus
WebAssembly compilation for Graphviz), no inline script or style, no other origin reachable.
"""

from __future__ import annotations

import asyncio
import gzip
import hashlib
from dataclasses import dataclass
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


@dataclass(frozen=True, slots=True)
class Asset:
    """A console file as served: read and gzipped once (the package's files do not change
    while the server runs; Graphviz's 1.2 MB travel as about a third of that)."""

    body: bytes
    gzipped: bytes
    etag: str
    content_type: str


class Assets:
    def __init__(self) -> None:
        self._loaded: dict[str, Asset] = {}

    async def get(self, name: str, content_type: str) -> Asset:
        asset = self._loaded.get(name)
        if asset is None:
            # Reading and compressing 1.2 MB takes tens of ms: not on the event loop.
            loop = asyncio.get_running_loop()
            asset = await loop.run_in_executor(None, _load, name, content_type)
            self._loaded[name] = asset
        return asset


def _load(name: str, content_type: str) -> Asset:
    body = (ROOT / name).read_bytes()
    etag = '"' + hashlib.sha256(body).hexdigest()[:20] + '"'
    return Asset(body, gzip.compress(body, compresslevel=6, mtime=0), etag, content_type)


ASSET_CACHE = web.AppKey("console_assets", Assets)


async def _serve(request: web.Request, name: str, content_type: str) -> web.Response:
    asset = await request.app[ASSET_CACHE].get(name, content_type)
    # no-cache: the browser revalidates (ETag), so an upgrade shows at once.
    headers = {
        **HEADERS,
        "Cache-Control": "no-cache",
        "ETag": asset.etag,
        "Vary": "Accept-Encoding",
    }
    if asset.etag in request.headers.get("If-None-Match", ""):
        return web.Response(status=304, headers=headers)
    body = asset.body
    if "gzip" in request.headers.get("Accept-Encoding", ""):
        body = asset.gzipped
        headers["Content-Encoding"] = "gzip"
    return web.Response(body=body, content_type=content_type, headers=headers)


async def index(request: web.Request) -> web.Response:
    return await _serve(request, "index.html", "text/html")


async def asset(request: web.Request) -> web.Response:
    name = request.match_info["name"]
    content_type = ASSETS.get(name)
    if content_type is None:
        raise NotFound(f"no console file {name[:100]!r}", code="not_found")
    return await _serve(request, name, content_type)


def add_console(app: web.Application) -> None:
    app[ASSET_CACHE] = Assets()
    app.router.add_get("/", index)
    app.router.add_get("/console/{name:.+}", asset)

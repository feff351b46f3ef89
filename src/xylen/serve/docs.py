"""/docs (Swagger UI) and /redoc (ReDoc) from files vendored in the package, never from a CDN.

FastAPI's own pages load their JavaScript, CSS and fonts from cdn.jsdelivr.net and fonts.googleapis.com: offline
or behind a firewall they stay blank, and every visit tells a third party that a xylen server is in use. Here the
same pages (FastAPI's HTML generators) point at ``static/`` (its README.md says where each file came from, its
sha256 and licence, and how to update it), served under ``ASSETS``; nothing on either page is fetched from another
origin (tests/integration/test_docs_browser.py checks that in a real browser with the network cut).

Who may fetch the assets is the gate's business, as for every route: without API keys only loopback Hosts and
XYLEN_ALLOWED_HOSTS, with keys a valid key, exactly as /docs itself.
"""

from __future__ import annotations

import functools
import hashlib
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html, get_swagger_ui_oauth2_redirect_html
from fastapi.responses import HTMLResponse
from starlette.staticfiles import StaticFiles
from starlette.types import Message, Receive, Scope, Send

ASSETS = "/static/docs"  # URL prefix of the vendored files; gate.route_of labels it "/static/docs/{file}"
STATIC = Path(__file__).with_name("static")
OAUTH2_REDIRECT = "/docs/oauth2-redirect"
# a URL carrying the current digest names these exact bytes: cache it for a year; any other URL: revalidate
# (StaticFiles answers If-None-Match with 304), so an old page never pairs with new files or the reverse
IMMUTABLE = b"public, max-age=31536000, immutable"
REVALIDATE = b"no-cache"
# What the pages may load, enforced by the browser: only this origin. ReDoc 2.5.4 always draws its sidebar logo
# from https://cdn.redoc.ly (no option turns it off): under this policy the browser never requests it and ReDoc
# hides the image. Inline script and style: FastAPI's page starts Swagger UI with an inline script, and both
# bundles inject <style> elements.
CSP = ("default-src 'self'; script-src 'self' 'unsafe-inline'; style-src 'self' 'unsafe-inline'; "
       "img-src 'self' data: blob:; font-src 'self' data:; connect-src 'self'; worker-src 'self' blob:; "
       "object-src 'none'; base-uri 'self'; form-action 'self'; frame-ancestors 'self'")


@functools.cache
def asset_digest() -> str:
    """A digest of every vendored file, for the ``?v=`` of the asset URLs.

    The content, not xylen's version: a checkout keeps one version through many edits, and a browser that cached
    the old Swagger UI for a year must not keep it after the files change. Computed once per process (~3 MB).
    """
    h = hashlib.sha256()
    for p in sorted(STATIC.rglob("*")):
        if p.is_file():
            data = p.read_bytes()
            h.update(f"{p.relative_to(STATIC).as_posix()}\0{len(data)}\0".encode())
            h.update(data)
    return h.hexdigest()[:16]


def asset_url(root: str, name: str) -> str:
    return f"{root}{ASSETS}/{name}?v={asset_digest()}"


class Assets:
    """StaticFiles over ``STATIC`` plus a Cache-Control header.

    StaticFiles resolves the path inside ``STATIC`` and answers 404 for anything that leaves it (``..``, an
    absolute path, a symlink pointing out), for folders and for missing files; only GET and HEAD (405 otherwise).
    """

    def __init__(self) -> None:
        self.files = StaticFiles(directory=STATIC)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        current = scope.get("query_string", b"") == b"v=" + asset_digest().encode()
        cache = IMMUTABLE if current else REVALIDATE

        async def with_cache(msg: Message) -> None:
            if msg["type"] == "http.response.start" and msg["status"] < 400:
                msg["headers"] = [*msg.get("headers", ()), (b"cache-control", cache)]
            await send(msg)

        await self.files(scope, receive, with_cache)


def _root(request: Request) -> str:
    return str(request.scope.get("root_path", "")).rstrip("/")  # as FastAPI's own pages: behind a path prefix


def _pinned(page: HTMLResponse) -> HTMLResponse:
    page.headers["Content-Security-Policy"] = CSP
    return page


async def swagger_ui(request: Request) -> HTMLResponse:
    root = _root(request)
    return _pinned(get_swagger_ui_html(
        openapi_url=root + str(request.app.openapi_url),
        title=f"{request.app.title} - Swagger UI",
        swagger_js_url=asset_url(root, "swagger-ui/swagger-ui-bundle.js"),
        swagger_css_url=asset_url(root, "swagger-ui/swagger-ui.css"),
        swagger_favicon_url=asset_url(root, "swagger-ui/favicon-32x32.png"),
        oauth2_redirect_url=root + OAUTH2_REDIRECT,
        # no validator badge: Swagger UI would send the spec's URL to validator.swagger.io
        swagger_ui_parameters={"validatorUrl": None},
    ))


async def oauth2_redirect(_request: Request) -> HTMLResponse:
    # FastAPI's copy of swagger-ui's oauth2-redirect.html: inline script, it loads nothing
    return _pinned(get_swagger_ui_oauth2_redirect_html())


async def redoc(request: Request) -> HTMLResponse:
    root = _root(request)
    return _pinned(get_redoc_html(
        openapi_url=root + str(request.app.openapi_url),
        title=f"{request.app.title} - ReDoc",
        redoc_js_url=asset_url(root, "redoc/redoc.standalone.js"),
        redoc_favicon_url=asset_url(root, "swagger-ui/favicon-32x32.png"),
        with_google_fonts=False,  # ReDoc falls back to the system's sans-serif
    ))


def install(app: FastAPI) -> None:
    """Serve the docs pages and their assets on ``app`` (built with ``docs_url=None, redoc_url=None``)."""
    app.mount(ASSETS, Assets(), name="docs-assets")
    # add_route, as FastAPI does for its own pages: GET and HEAD, not in the schema
    app.add_route("/docs", swagger_ui, include_in_schema=False)
    app.add_route(OAUTH2_REDIRECT, oauth2_redirect, include_in_schema=False)
    app.add_route("/redoc", redoc, include_in_schema=False)

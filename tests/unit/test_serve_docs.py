"""/docs and /redoc from the package's vendored assets (no CDN), in process: the pages reference only this
origin, each asset answers with its type and cache policy, hostile paths are 404, who may call follows /docs, the
metrics label stays bounded, and static/README.md is true about the files. The real browser, with the network
cut, is tests/integration/test_docs_browser.py."""

from __future__ import annotations

import asyncio
import hashlib
import re
import shutil
import warnings
from collections.abc import Iterator
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest

from xylen.core.settings import load_settings
from xylen.serve import docs
from xylen.serve.app import create_app
from xylen.serve.gate import route_of

with warnings.catch_warnings():  # starlette warns at import that httpx2 would be preferred
    warnings.simplefilter("ignore")
    from starlette.testclient import TestClient

pytestmark = pytest.mark.unit
REPO = Path(__file__).resolve().parents[2]
KEY = "docs-test-key-not-secret"
PAGES = ("/docs", "/redoc")
TYPES = {".js": "text/javascript", ".css": "text/css", ".png": "image/png"}


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("docs-home")  # no model: the docs need none


@pytest.fixture(scope="module")
def client(home: Path) -> Iterator[Any]:
    with TestClient(create_app(load_settings({"home": home}, environ={})), base_url="http://127.0.0.1") as c:
        yield c


@pytest.fixture(scope="module")
def keyed(home: Path) -> Iterator[Any]:
    app = create_app(load_settings({"home": home, "api_keys": KEY}, environ={}))
    with TestClient(app, base_url="http://docs.example") as c:  # with keys any Host is fine
        yield c


class Loads(HTMLParser):
    """What a browser fetches for a page: script src, link href (stylesheets, icons), img/iframe/source src."""

    def __init__(self) -> None:
        super().__init__()
        self.urls: list[tuple[str, str]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        for attr in ("src", "href", "srcset", "data", "poster"):
            if a.get(attr):
                self.urls.append((tag, str(a[attr])))


def loads(html: str) -> list[tuple[str, str]]:
    parser = Loads()
    parser.feed(html)
    return parser.urls


@pytest.mark.parametrize("page", PAGES)
def test_the_pages_load_only_same_origin_assets(client: Any, page: str) -> None:
    r = client.get(page)
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    urls = loads(r.text)
    assert {tag for tag, _ in urls} >= {"script", "link"}, urls
    for tag, url in urls:
        assert url.startswith(f"{docs.ASSETS}/") and "//" not in url, (tag, url)
        asset = client.get(url)
        assert asset.status_code == 200, (url, asset.text[:200])
        assert asset.headers["content-type"].startswith(TYPES[Path(url.split("?")[0]).suffix]), url
    # nor anything the inline script would fetch: no absolute URL on the page at all
    assert not re.search(r"https?:|//[a-z]", r.text, re.IGNORECASE), r.text
    assert "cdn.jsdelivr.net" not in r.text and "fonts.googleapis.com" not in r.text


def test_swagger_ui_has_no_validator_and_reads_our_schema(client: Any) -> None:
    html = client.get("/docs").text
    assert '"validatorUrl": null' in html  # otherwise Swagger UI sends the spec's URL to validator.swagger.io
    assert "url: '/openapi.json'" in html
    assert '<redoc spec-url="/openapi.json">' in client.get("/redoc").text


@pytest.mark.parametrize("page", [*PAGES, docs.OAUTH2_REDIRECT])
def test_the_pages_tell_the_browser_to_load_from_this_origin_only(client: Any, page: str) -> None:
    r = client.get(page)
    assert r.status_code == 200
    policy = dict(d.strip().split(" ", 1) for d in r.headers["content-security-policy"].split(";"))
    for directive in ("default-src", "script-src", "style-src", "img-src", "font-src", "connect-src"):
        sources = policy[directive].split()
        assert sources[0] == "'self'", (directive, sources)
        assert not [s for s in sources if s not in ("'self'", "'unsafe-inline'", "data:", "blob:")], directive


def test_the_pages_are_not_in_the_schema_and_the_schema_still_works(client: Any) -> None:
    spec = client.get("/openapi.json")
    assert spec.status_code == 200
    paths = spec.json()["paths"]
    assert "/predict" in paths
    assert not [p for p in paths if p.startswith(("/docs", "/redoc", "/static"))], list(paths)


def test_head_and_the_oauth2_redirect_page(client: Any) -> None:
    for page in PAGES:
        assert client.head(page).status_code == 200  # as FastAPI's own pages
    r = client.get(docs.OAUTH2_REDIRECT)
    assert r.status_code == 200 and "window.opener.swaggerUIRedirectOauth2" in r.text
    assert not loads(r.text) and "http" not in r.text


def vendored() -> list[str]:
    return sorted(p.relative_to(docs.STATIC).as_posix() for p in docs.STATIC.rglob("*") if p.is_file())


@pytest.mark.parametrize("name", [n for n in vendored() if Path(n).suffix in TYPES])
def test_each_asset_answers_with_its_bytes_and_type(client: Any, name: str) -> None:
    r = client.get(f"{docs.ASSETS}/{name}")
    assert r.status_code == 200
    assert r.content == (docs.STATIC / name).read_bytes()
    assert r.headers["content-type"].startswith(TYPES[Path(name).suffix])
    head = client.head(f"{docs.ASSETS}/{name}")
    assert head.status_code == 200 and head.content == b""
    assert int(head.headers["content-length"]) == len(r.content)


def test_a_versioned_url_is_cached_for_a_year_and_any_other_is_revalidated(client: Any) -> None:
    url = f"{docs.ASSETS}/swagger-ui/swagger-ui.css"
    current = client.get(f"{url}?v={docs.asset_digest()}")
    assert current.headers["cache-control"] == "public, max-age=31536000, immutable"
    for other in (url, f"{url}?v=0123456789abcdef", f"{url}?v={docs.asset_digest()}&x=1"):
        r = client.get(other)
        assert r.status_code == 200 and r.headers["cache-control"] == "no-cache", other
    again = client.get(url, headers={"if-none-match": current.headers["etag"]})
    assert again.status_code == 304 and again.content == b""


def test_the_digest_follows_the_content(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    copy = tmp_path / "static"
    shutil.copytree(docs.STATIC, copy)
    monkeypatch.setattr(docs, "STATIC", copy)
    compute = docs.asset_digest.__wrapped__
    before = compute()
    assert before == docs.asset_digest()  # the copy holds the same bytes as the package
    css = copy / "swagger-ui" / "swagger-ui.css"
    css.write_bytes(css.read_bytes() + b"\n")
    assert compute() != before
    css.rename(copy / "swagger-ui" / "renamed.css")
    assert compute() != before


async def _asgi_get(app: Any, path: str, method: str = "GET") -> tuple[int, bytes]:
    """One request with ``path`` exactly as given: httpx would remove the dot segments before sending."""
    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": method, "scheme": "http",
             "path": path, "raw_path": path.encode("utf-8", "surrogateescape"), "root_path": "", "query_string": b"",
             "headers": [(b"host", b"127.0.0.1")], "client": ("127.0.0.1", 1), "server": ("127.0.0.1", 80)}
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(msg: dict[str, Any]) -> None:
        sent.append(msg)

    await app(scope, receive, send)
    return sent[0]["status"], b"".join(m.get("body", b"") for m in sent[1:])


HOSTILE = [
    "/static/docs/../docs.py",  # a real file one level up: xylen/serve/docs.py
    "/static/docs/../../serve/docs.py",
    "/static/docs/swagger-ui/../../docs.py",
    "/static/docs/../../../../../../../../etc/passwd",
    "/static/docs//etc/passwd",
    "/static/docs/swagger-ui/..\\..\\docs.py",
    "/static/docs/..%2fdocs.py",
    "/static/docs/%2e%2e/docs.py",
    "/static/docs/swagger-ui/LICENSE\x00.js",
    "/static/docs/" + "a" * 5000,
    "/static/docs/swagger-ui/" + "../" * 200 + "etc/passwd",
    "/static/docs/",
    "/static/docs/swagger-ui",
    "/static/docs/swagger-ui/",
    "/static/docs/swagger-ui/swagger-ui-bundle.js.map",
    "/static/docs/no-such-file.js",
]


@pytest.mark.parametrize("path", HOSTILE)
def test_hostile_and_missing_paths_are_404(client: Any, path: str) -> None:
    status, body = asyncio.run(_asgi_get(client.app, path))
    assert status == 404, (path, status, body[:200])
    assert body == b'{"error":"No such route; see /docs."}'


def test_other_methods_on_assets_are_refused_without_a_500(client: Any) -> None:
    for method in ("PUT", "DELETE", "PATCH"):
        status, _ = asyncio.run(_asgi_get(client.app, f"{docs.ASSETS}/redoc/LICENSE", method))
        assert status in (405, 415), (method, status)
    r = client.post(f"{docs.ASSETS}/redoc/LICENSE", json={})
    assert r.status_code == 405 and "error" in r.json()


def test_asset_requests_have_one_bounded_metrics_label(client: Any) -> None:
    for path in ("/static/docs/a", "/static/docs/../../x", "/static/docs/" + "z" * 300):
        assert route_of(path) == "/static/docs/{file}"
    assert route_of("/predict") == "/predict" and route_of("/static/docsx") == "other"
    client.get(f"{docs.ASSETS}/redoc/LICENSE")
    client.get(f"{docs.ASSETS}/made-up-name-12345.js")
    text = client.get("/metrics").text
    assert 'route="/static/docs/{file}",status="200"' in text
    assert 'route="/static/docs/{file}",status="404"' in text
    assert "made-up-name" not in text and "LICENSE" not in text


# --- who may call: the assets follow /docs -------------------------------------------------------------------
ASSET = f"{docs.ASSETS}/swagger-ui/swagger-ui.css"


@pytest.mark.parametrize("path", [*PAGES, ASSET])
def test_a_keyless_server_answers_the_docs_only_to_loopback_names(client: Any, path: str) -> None:
    assert client.get(path, headers={"host": "localhost:8000"}).status_code == 200
    r = client.get(path, headers={"host": "evil.example"})
    assert r.status_code == 421 and "XYLEN_ALLOWED_HOSTS" in r.json()["error"]


def test_allowed_hosts_open_the_docs_and_their_assets(home: Path) -> None:
    settings = load_settings({"home": home, "allowed_hosts": "docs.example"}, environ={})
    with TestClient(create_app(settings), base_url="http://docs.example") as c:
        for path in (*PAGES, ASSET):
            assert c.get(path).status_code == 200, path


@pytest.mark.parametrize("path", [*PAGES, docs.OAUTH2_REDIRECT, ASSET])
def test_a_server_with_keys_refuses_the_docs_and_assets_without_one(keyed: Any, path: str) -> None:
    r = keyed.get(path)
    assert r.status_code == 401 and "API key" in r.json()["error"]
    assert keyed.get(path, headers={"x-api-key": "wrong"}).status_code == 401
    assert keyed.get(path, headers={"authorization": f"Bearer {KEY}"}).status_code == 200


# --- static/README.md tells the truth about the files --------------------------------------------------------
def test_the_vendored_readme_lists_every_file_with_its_sha256() -> None:
    readme = (docs.STATIC / "README.md").read_text()
    listed = dict(re.findall(r"^\| `([^`]+)` \| `[^`]+` \| `([0-9a-f]{64})` \|$", readme, re.MULTILINE))
    files = [n for n in vendored() if n != "README.md"]
    assert sorted(listed) == files
    for name, digest in listed.items():
        assert hashlib.sha256((docs.STATIC / name).read_bytes()).hexdigest() == digest, name


def test_only_what_the_pages_need_is_vendored_with_the_licences() -> None:
    assert vendored() == sorted([
        "README.md",
        "swagger-ui/swagger-ui-bundle.js", "swagger-ui/swagger-ui-bundle.js.LICENSE.txt", "swagger-ui/swagger-ui.css",
        "swagger-ui/favicon-32x32.png", "swagger-ui/LICENSE", "swagger-ui/NOTICE",
        "redoc/redoc.standalone.js", "redoc/redoc.standalone.js.LICENSE.txt", "redoc/LICENSE",
    ])
    assert "Apache License" in (docs.STATIC / "swagger-ui/LICENSE").read_text()
    assert "MIT License" in (docs.STATIC / "redoc/LICENSE").read_text()


def _docker_excludes(path: str, patterns: list[str]) -> bool:
    """Docker's .dockerignore rule for one file: the last pattern matching the path or a parent folder decides."""
    excluded = False
    parents = ["/".join(path.split("/")[: i + 1]) for i in range(path.count("/") + 1)]
    for pattern in patterns:
        negate = pattern.startswith("!")
        glob = pattern[1:] if negate else pattern
        rx = re.escape(glob.strip("/")).replace(r"\*\*/", "(.*/)?").replace(r"\*", "[^/]*").replace(r"\?", "[^/]")
        rx = re.sub(r"\\\[(.*?)\\\]", r"[\1]", rx)
        if any(re.fullmatch(rx, p) for p in parents):
            excluded = not negate
    return excluded


def test_the_assets_reach_the_docker_build_context() -> None:
    lines = (REPO / ".dockerignore").read_text().splitlines()
    patterns = [ln.strip() for ln in lines if ln.strip() and not ln.lstrip().startswith("#")]
    assert _docker_excludes("tests/unit/test_serve_docs.py", patterns)  # the matcher does exclude things
    assert _docker_excludes("src/xylen/__pycache__/cli.cpython-311.pyc", patterns)
    for name in vendored():
        assert not _docker_excludes(f"src/xylen/serve/static/{name}", patterns), name

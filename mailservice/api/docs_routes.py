"""The API's description, for integrators (API.md section 12), as one blueprint:

    GET /openapi.json     the OpenAPI 3.1 document (`api/openapi.py`), built once per app
    GET /docs             a browsable page of it: Swagger UI
    GET /docs/<asset>     the page's style sheet and scripts, served by the service itself

Swagger UI's files come from the installed flask-swagger-ui package (its `dist/` folder, the
Swagger UI release the package is named after); only its files are used, not its blueprint,
whose page configures Swagger UI in an inline script. The page and its starter script are this
package's own (`docs_page/`), so that the page's Content-Security-Policy allows scripts and
styles from the service alone: no CDN, no inline script, and no call to Swagger UI's online
validator, so the page works offline. None of these routes needs a key: the document describes
the API and holds no secret.
"""

from __future__ import annotations

import hashlib
import json
from importlib.resources import files
from pathlib import Path

from flask import Blueprint, Response, request

from mailservice.api.openapi import build_document
from mailservice.api.request_path import problem
from mailservice.config import Settings

PAGE_FILES = Path(__file__).with_name("docs_page")
SWAGGER_UI = Path(str(files("flask_swagger_ui") / "dist"))
# The only files served under /docs/: name -> (file, media type).
ASSETS: dict[str, tuple[Path, str]] = {
    "swagger-ui.css": (SWAGGER_UI / "swagger-ui.css", "text/css"),
    "swagger-ui-bundle.js": (SWAGGER_UI / "swagger-ui-bundle.js", "text/javascript"),
    "docs.js": (PAGE_FILES / "docs.js", "text/javascript"),
}
# Swagger UI draws its icons as data: images and reads the document with fetch (connect-src).
PAGE_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
ASSET_MAX_AGE = 3600


def swagger_ui_version() -> str:
    """The Swagger UI release the installed package ships (its dist/VERSION: `v5.34.0`)."""
    return (SWAGGER_UI / "VERSION").read_text(encoding="utf-8").strip()


def docs_blueprint(settings: Settings) -> Blueprint:
    """The document and its page; the document is built here, once, from the settings."""
    docs = Blueprint("docs", __name__)
    document = json.dumps(build_document(settings), separators=(",", ":")).encode()
    page = (PAGE_FILES / "index.html").read_bytes()
    missing = [name for name, (path, _) in ASSETS.items() if not path.is_file()]
    if missing:  # an incomplete install: say so at start-up, not as a blank page later
        raise RuntimeError(f"docs assets missing from the installed packages: {missing}")
    # Read once (about 2 MB): no file is opened per request, and each has its ETag.
    contents = {name: path.read_bytes() for name, (path, _) in ASSETS.items()}
    etags = {name: hashlib.sha256(data).hexdigest()[:32] for name, data in contents.items()}

    @docs.get("/openapi.json")
    def openapi() -> Response:
        response = Response(document, mimetype="application/json")
        response.headers["Cache-Control"] = "no-cache"
        return response

    @docs.get("/docs")
    def page_view() -> Response:
        response = Response(page, mimetype="text/html")
        response.headers["Content-Security-Policy"] = PAGE_POLICY
        response.headers["Referrer-Policy"] = "no-referrer"
        response.headers["Cache-Control"] = "no-cache"
        return response

    @docs.get("/docs/<asset>")
    def asset_view(asset: str) -> Response:
        found = ASSETS.get(asset)
        if found is None:
            return problem(404, "No such asset.")
        response = Response(contents[asset], mimetype=found[1])
        response.set_etag(etags[asset])
        response.cache_control.public = True
        response.cache_control.max_age = ASSET_MAX_AGE
        response.headers["X-Content-Type-Options"] = "nosniff"
        return response.make_conditional(request)

    return docs

"""The pair viewer: a read-only web page over the pair store (`GET /ui`).

Plain HTML, CSS and JavaScript shipped as package data (`static/`), no build step, no CDN.
`page_router` serves the page and its files; `api_router` adds the one `/v1` endpoint the page
needs that the API lacked (`GET /v1/datasets/{name}/summary`).
"""

from selfreward_vlm.service.ui.router import api_router, page_router

__all__ = ["api_router", "page_router"]

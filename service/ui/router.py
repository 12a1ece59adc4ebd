"""The pair viewer's routes: the page (`GET /ui`), its static files, and one data endpoint.

The page and its static files are served WITHOUT the bearer token: they hold no data, and a
browser cannot attach a header to the page load itself. The page asks for the key once, keeps
it in `sessionStorage` (this tab, this session) and sends it on every data call, all of which
are `/v1/*` routes behind the same bearer auth as the rest of the API.

Every page response carries a strict Content-Security-Policy (scripts from this origin only, no
inline script), so pair text that holds markup could not run even if it reached the DOM as
markup; the page itself only ever inserts data with `textContent`.
"""

from __future__ import annotations

from functools import lru_cache
from importlib import resources
from typing import Any
from weakref import WeakKeyDictionary

from fastapi import APIRouter, Depends, Query, Response
from fastapi import Path as PathParam
from fastapi.responses import RedirectResponse

from selfreward_vlm.core.schemas import ErrorResponse
from selfreward_vlm.service.errors import NotFoundError
from selfreward_vlm.service.protocols.viewer import DatasetSummary
from selfreward_vlm.service.state import AppState, get_state
from selfreward_vlm.service.store import DATASET_NAME_RE
from selfreward_vlm.service.ui.summary import SummaryCache

# One cache per store (an app has one; tests build several), gone with its store.
_SUMMARIES: WeakKeyDictionary[Any, SummaryCache] = WeakKeyDictionary()

page_router = APIRouter(tags=["ui"], include_in_schema=False)
api_router = APIRouter(prefix="/v1", tags=["ui"])

_MEDIA_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".svg": "image/svg+xml",
}
# blob: images are the stored images, fetched with the token and shown from object URLs.
_CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' blob: data:; "
    "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
_PAGE_HEADERS = {
    "Content-Security-Policy": _CSP,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}


@lru_cache(maxsize=1)
def static_files() -> dict[str, bytes]:
    """The viewer's files by name, read once from the installed package."""
    folder = resources.files("selfreward_vlm.service.ui").joinpath("static")
    return {
        f.name: f.read_bytes()
        for f in folder.iterdir()
        if f.is_file() and any(f.name.endswith(ext) for ext in _MEDIA_TYPES)
    }


def _file_response(name: str) -> Response:
    data = static_files().get(name)
    if data is None:
        raise NotFoundError(f"no viewer file named {name!r}", field="name")
    media = next(t for ext, t in _MEDIA_TYPES.items() if name.endswith(ext))
    return Response(data, media_type=media, headers=_PAGE_HEADERS)


@page_router.get("/ui")
def page() -> Response:
    """The viewer's page (no data in it: data calls go to `/v1/*` with the token)."""
    return _file_response("index.html")


@page_router.get("/ui/")
def page_slash() -> RedirectResponse:
    """`/ui/` would break the page's relative URLs: send it to `/ui`."""
    return RedirectResponse("../ui", status_code=308)


@page_router.get("/ui/static/{name}")
def static(name: str) -> Response:
    """One of the viewer's static files (HTML, CSS, JavaScript, SVG)."""
    return _file_response(name)


@api_router.get(
    "/datasets/{name}/summary",
    response_model=DatasetSummary,
    summary="A dataset's methods, iterations, mean lengths and reward histograms",
    responses={code: {"model": ErrorResponse} for code in (404, 422)},
)
def dataset_summary(
    name: str = PathParam(..., pattern=DATASET_NAME_RE.pattern, description="dataset name"),
    method: str | None = Query(None, max_length=200, description="histograms of this method"),
    bins: int = Query(20, ge=1, le=200, description="histogram bins"),
    state: AppState = Depends(get_state),
) -> DatasetSummary:
    """Pairs per method and iteration, per-(method, iteration) means (reward, margin, length
    in words, mean sentence R_I), and per-iteration histograms of chosen vs rejected reward,
    R_I (CSR's Figure 5) and length (SBSPO's Table 2). One pass over the dataset."""
    cache = _SUMMARIES.setdefault(state.store, SummaryCache())
    return cache.summary(state.store, name, method, bins)

"""The pair store over HTTP: idempotent upserts and cursor pages of preference pairs.

`POST /v1/datasets/{name}/pairs` stores a batch in one transaction (acknowledged = durable);
a pair id already in the dataset is a duplicate and is left as it was (first write wins).
Every image id a pair names must be stored already (`POST /v1/images`; else a 404
`image_not_found`), so a trainer reading the dataset can always fetch its images.
"""

from __future__ import annotations

from fastapi import APIRouter, Depends, Query
from fastapi import Path as PathParam

from selfreward_vlm.core.schemas import (
    DatasetDeleted,
    DatasetInfo,
    DatasetList,
    ErrorResponse,
    PairsPage,
    PairsUpsertRequest,
    PairsUpsertResponse,
)
from selfreward_vlm.service.errors import PayloadTooLargeError
from selfreward_vlm.service.images.store import ImageNotFoundError
from selfreward_vlm.service.state import AppState, get_state
from selfreward_vlm.service.store import DATASET_NAME_RE
from selfreward_vlm.service.store.records import CURSOR_RE, MissingImagesError

router = APIRouter(prefix="/v1", tags=["datasets"])

_NAME = PathParam(
    ...,
    pattern=DATASET_NAME_RE.pattern,
    description="dataset name: 1-128 of [A-Za-z0-9._-], starting with a letter or digit",
)
_ERRORS: dict[int | str, dict] = {
    code: {"model": ErrorResponse} for code in (404, 413, 422, 503, 507)
}


@router.post(
    "/datasets/{name}/pairs",
    response_model=PairsUpsertResponse,
    summary="Add preference pairs (idempotent by pair id)",
    responses=_ERRORS,
)
def upsert_pairs(
    body: PairsUpsertRequest, name: str = _NAME, state: AppState = Depends(get_state)
) -> PairsUpsertResponse:
    """Insert the pairs whose ids are new to the dataset (created on first write); returns how
    many were inserted, how many were duplicates, and the dataset's size."""
    limit = state.settings.max_pairs_per_request
    if len(body.pairs) > limit:
        raise PayloadTooLargeError(
            f"{len(body.pairs)} pairs in one request; at most {limit}", field="pairs"
        )
    try:
        inserted, duplicates, total = state.store.upsert(name, body.pairs, check_images=True)
    except MissingImagesError as exc:
        raise _image_not_found(body, exc.missing) from None
    return PairsUpsertResponse(dataset=name, inserted=inserted, duplicates=duplicates, total=total)


def _image_not_found(body: PairsUpsertRequest, missing: set[str]) -> ImageNotFoundError:
    """404 `image_not_found` naming the first pair image the store lacks."""
    for i, pair in enumerate(body.pairs):
        for j, image in enumerate(pair.images):
            if image in missing:
                return ImageNotFoundError(
                    f"unknown image id {image!r} ({len(missing)} unknown in this batch); "
                    "upload images with POST /v1/images first",
                    field=f"pairs.{i}.images.{j}",
                )
    return ImageNotFoundError(f"{len(missing)} unknown image id(s)", field="pairs")


@router.get(
    "/datasets/{name}/pairs",
    response_model=PairsPage,
    summary="A page of a dataset's pairs, in insertion order",
    responses=_ERRORS,
)
def page_pairs(
    name: str = _NAME,
    after: str | None = Query(
        None,
        description="cursor: `next_cursor` of the previous page",
        json_schema_extra={"pattern": CURSOR_RE.pattern},  # decode_cursor enforces it
    ),
    limit: int = Query(100, ge=1, le=1000, description="pairs per page"),
    state: AppState = Depends(get_state),
) -> PairsPage:
    """Up to `limit` pairs after cursor `after`; `next_cursor` is null on the last page."""
    pairs, next_cursor = state.store.page(name, after, limit)
    return PairsPage(dataset=name, pairs=pairs, next_cursor=next_cursor)


@router.delete(
    "/datasets/{name}",
    response_model=DatasetDeleted,
    summary="Delete a dataset and its pairs (admin)",
    responses=_ERRORS,
)
def delete_dataset(name: str = _NAME, state: AppState = Depends(get_state)) -> DatasetDeleted:
    """Delete every pair of the dataset in one transaction (needs the admin key when one is
    set). The images its pairs named stay until `POST /v1/admin/gc` finds no pair naming
    them; a name deleted and posted to again starts empty."""
    return DatasetDeleted(dataset=name, deleted=state.store.delete_dataset(name))


@router.get("/datasets", response_model=DatasetList, summary="Every dataset and its size")
def list_datasets(state: AppState = Depends(get_state)) -> DatasetList:
    """Datasets by name, with their pair counts."""
    return DatasetList(datasets=[DatasetInfo(name=n, count=c) for n, c in state.store.datasets()])

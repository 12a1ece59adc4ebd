"""Freeing space through the service: `POST /v1/admin/gc` (admin key).

Deletes the images no pair names and the adapter versions no adapter name points to, both
only when older than `min_age_s` (default the `gc_min_age_s` setting, 1 day). Kept, and why:
- images a pair names: a trainer reading the dataset fetches them;
- recent unreferenced images: a search uploads its images first and posts their pairs at the
  end, minutes or hours later;
- adapter files a name points to (the registry's current version of every live name), and
  recent ones: an upload stores its files before it points the name at them.
Datasets themselves go with `DELETE /v1/datasets/{name}`; their images then become
unreferenced and a later gc collects them. The same from a shell:
`python -m selfreward_vlm.service.store gc URL --adapter-store DIR`.
"""

from __future__ import annotations

from pathlib import Path

import anyio
from fastapi import APIRouter, Depends

from selfreward_vlm.core.schemas import ErrorResponse, GcRequest, GcResponse
from selfreward_vlm.service.state import AppState, get_state

router = APIRouter(prefix="/v1", tags=["admin"])


def adapter_store_root(state: AppState) -> Path:
    settings = state.settings
    return Path(settings.adapter_store or settings.data_dir / "adapter-store")


@router.post(
    "/admin/gc",
    response_model=GcResponse,
    summary="Delete unreferenced images and adapter files (admin)",
    responses={code: {"model": ErrorResponse} for code in (503, 507)},
)
async def collect_garbage(body: GcRequest, state: AppState = Depends(get_state)) -> GcResponse:
    """Delete (or, with `dry_run`, count) what nothing references; see the module doc for
    what is kept and why. Pair writes wait while the image sweep runs (one transaction)."""
    from selfreward_vlm.service.adapters.shared import gc_adapter_files

    min_age = state.settings.gc_min_age_s if body.min_age_s is None else body.min_age_s
    images = await anyio.to_thread.run_sync(state.store.gc, min_age, body.dry_run)
    adapters = await anyio.to_thread.run_sync(
        gc_adapter_files, state.store, adapter_store_root(state), min_age, body.dry_run
    )
    return GcResponse(
        dry_run=body.dry_run,
        images_deleted=images.images_deleted,
        image_bytes_freed=images.image_bytes_freed,
        images_kept_referenced=images.images_kept_referenced,
        images_kept_recent=images.images_kept_recent,
        adapter_files_deleted=adapters[0],
        adapter_bytes_freed=adapters[1],
        adapter_files_kept=adapters[2],
    )

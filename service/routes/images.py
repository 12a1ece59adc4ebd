"""Image upload and download: `POST /v1/images`, `GET /v1/images/{id}`.

Images are stored once by sha256, so a search uploads each image once and then sends its id.
The store works while the models are still loading.
"""

from __future__ import annotations

import anyio
from fastapi import APIRouter, Depends, Request, Response
from fastapi import Path as PathParam
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException
from starlette.formparsers import MultiPartException

from selfreward_vlm.core.schemas import ErrorResponse, ImageUploadResponse
from selfreward_vlm.service.errors import InvalidRequestError, ServiceError
from selfreward_vlm.service.images.store import IMAGE_ID_RE, media_type
from selfreward_vlm.service.state import AppState, get_state

router = APIRouter(prefix="/v1", tags=["images"])

_ERRORS: dict[int | str, dict] = {code: {"model": ErrorResponse} for code in (413, 415, 422)}
_UPLOAD_BODY = {
    "required": True,
    "description": "The image file: raw bytes (`image/*` or `application/octet-stream`), or a "
    "multipart form with one file field named `file`.",
    "content": {
        "image/*": {"schema": {"type": "string", "format": "binary"}},
        "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
        "multipart/form-data": {
            "schema": {
                "type": "object",
                "properties": {"file": {"type": "string", "format": "binary"}},
                "required": ["file"],
                "additionalProperties": False,
            }
        },
    },
}


class UnsupportedMediaTypeError(ServiceError):
    status_code = 415
    type = "unsupported_media_type"


@router.post(
    "/images",
    response_model=ImageUploadResponse,
    summary="Store an image; returns its sha256 id",
    openapi_extra={"requestBody": _UPLOAD_BODY},
    responses=_ERRORS,
)
async def upload_image(
    request: Request, state: AppState = Depends(get_state)
) -> ImageUploadResponse:
    """Validate (size, pixel count, full decode) and store an image. Idempotent: the same
    bytes always give the same id, and are stored once."""
    content_type = request.headers.get("content-type", "application/octet-stream")
    main = content_type.split(";", 1)[0].strip().lower()
    if main == "multipart/form-data":
        data, field = await _read_multipart(request), "file"
    elif main.startswith("image/") or main == "application/octet-stream":
        data, field = await request.body(), "body"
    else:
        raise UnsupportedMediaTypeError(
            f"send the image as raw bytes (image/* or application/octet-stream) or as "
            f"multipart/form-data with a 'file' field, not {main!r}",
            field="content-type",
        )
    image_id, width, height = await anyio.to_thread.run_sync(state.images.put, data, field)
    return ImageUploadResponse(id=image_id, width=width, height=height)


async def _read_multipart(request: Request) -> bytes:
    """The bytes of the one `file` field of a multipart form; anything else is a 422."""
    try:
        form = await request.form(max_files=4, max_fields=4)
    except (MultiPartException, HTTPException) as e:
        detail = e.message if isinstance(e, MultiPartException) else e.detail
        raise InvalidRequestError(
            f"bad multipart form ({detail}): send one file field named 'file'", field="file"
        ) from None
    try:
        for key in form:
            if key != "file":
                raise InvalidRequestError(f"unexpected form field {key!r}", field=key)
        if len(form.getlist("file")) > 1:
            raise InvalidRequestError("one image per request", field="file")
        upload = form.get("file")
        if upload is None:
            raise InvalidRequestError("missing form field 'file'", field="file")
        if not isinstance(upload, UploadFile):
            raise InvalidRequestError("form field 'file' must be a file upload", field="file")
        return await upload.read()
    finally:
        await form.close()


@router.get(
    "/images/{image_id}",
    response_class=Response,
    summary="The stored image bytes",
    responses={
        200: {"content": {"image/*": {"schema": {"type": "string", "format": "binary"}}}},
        404: {"model": ErrorResponse},
    },
)
def get_image(
    image_id: str = PathParam(
        ..., pattern=r"^[0-9a-fA-F]{64}$", description="sha256 hex id from POST /v1/images"
    ),
    state: AppState = Depends(get_state),
) -> Response:
    """The image exactly as uploaded, with its content type. Ids are content hashes, so the
    response never changes and may be cached forever."""
    image_id = image_id.lower()
    if not IMAGE_ID_RE.match(image_id):
        raise InvalidRequestError("an image id is 64 hex characters (sha256)", field="image_id")
    row = state.images.get_row(image_id, field="image_id")
    headers = {"ETag": f'"{row.id}"', "Cache-Control": "public, max-age=31536000, immutable"}
    return Response(row.data, media_type=media_type(row.format), headers=headers)

"""LoRA adapters over HTTP: upload (PEFT safetensors only), list, delete.

An upload is a multipart form with exactly three fields: `name`, and the two files PEFT's
`save_pretrained` writes, as fields named `adapter_config.json` and `adapter_model.safetensors`.
Nothing is ever unpickled and no client-supplied path is used: the server names every file.
The files are checked before anything is stored or loaded: the config is JSON with
`peft_type == "LORA"` whose `target_modules` match modules of the served model; the weights
are a safetensors file whose header tells the truth (every tensor's byte range matches its
dtype and shape, the ranges tile the data exactly) and whose LoRA matrices fit the served
model's layers (an adapter trained on another base model is refused, naming the file). The
files are written under `data_dir/adapters/.tmp/`, fsynced, renamed into
`data_dir/adapters/<name>/` in one atomic rename (a crash never leaves a half-written adapter
to be served after a restart) and loaded by the engine; a load failure is a 422 and leaves
nothing behind. Uploaded adapters come back after a restart.

Uploading a name that exists replaces that adapter (the engine swaps it between batches).
Adapters given at start-up (`--adapter`) and `base` belong to the operator: replacing or
deleting them is a 409.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import uuid
from pathlib import Path
from typing import IO, Any

import anyio
from fastapi import APIRouter, Depends, File, Form, Request, Response, UploadFile
from fastapi import Path as PathParam

from selfreward_vlm.core.schemas import AdapterInfo, AdapterList, ErrorResponse
from selfreward_vlm.service.adapters.files import (
    CONFIG_FILE,
    WEIGHTS_FILE,
    InvalidAdapterError,
    check_config,
    check_fits,
    check_safetensors,
    fsync_dir,
)
from selfreward_vlm.service.errors import (
    ConflictError,
    InvalidRequestError,
    NotFoundError,
    PayloadTooLargeError,
    ServiceError,
)
from selfreward_vlm.service.settings import ServiceSettings
from selfreward_vlm.service.state import AppState, get_ready_state
from selfreward_vlm.service.store.faults import is_disk_full, storage_full

logger = logging.getLogger(__name__)
router = APIRouter(prefix="/v1", tags=["adapters"])

ADAPTER_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
# An upload's name: ADAPTER_NAME_RE but not "base" (the model itself), spelled without a
# lookahead (pydantic's regex engine has none): 1-3 or 5-64 characters, or 4 that are not
# b-a-s-e.
_C = "[A-Za-z0-9._-]"
UPLOAD_NAME_PATTERN = (
    f"^(?:[A-Za-z0-9]{_C}{{0,2}}|[A-Za-z0-9]{_C}{{4,63}}|[A-Za-ac-z0-9]{_C}{{3}}"
    f"|b[A-Zb-z0-9._-]{_C}{{2}}|ba[A-Za-rt-z0-9._-]{_C}|bas[A-Za-df-z0-9._-])$"
)
_FIELDS = {"name", CONFIG_FILE, WEIGHTS_FILE}
_MAX_CONFIG_BYTES = 2**20
_ERRORS: dict[int | str, dict] = {
    code: {"model": ErrorResponse} for code in (404, 409, 413, 422, 503, 507)
}


def adapters_dir(settings: ServiceSettings) -> Path:
    return settings.data_dir / "adapters"


@router.post(
    "/adapters",
    response_model=AdapterInfo,
    status_code=201,
    summary="Upload (or replace) a LoRA adapter",
    responses=_ERRORS,
)
async def upload_adapter(
    request: Request,
    name: str = Form(..., pattern=UPLOAD_NAME_PATTERN, description="adapter name (not 'base')"),
    config: UploadFile = File(..., alias=CONFIG_FILE, description="PEFT adapter_config.json"),
    weights: UploadFile = File(..., alias=WEIGHTS_FILE, description="adapter weights"),
    state: AppState = Depends(get_ready_state),
) -> AdapterInfo:
    """Validate, store and load a PEFT LoRA adapter; it is usable as `model` at once."""
    await _check_form(request, name)
    settings = state.settings
    sizes = {CONFIG_FILE: config.size or 0, WEIGHTS_FILE: weights.size or 0}
    if sizes[CONFIG_FILE] > _MAX_CONFIG_BYTES:
        raise PayloadTooLargeError(f"{CONFIG_FILE} is over 1 MiB", field=CONFIG_FILE)
    if sum(sizes.values()) > settings.max_adapter_bytes:
        raise PayloadTooLargeError(
            f"adapter is {sum(sizes.values())} bytes; the limit is {settings.max_adapter_bytes}",
            field=WEIGHTS_FILE,
        )
    root = adapters_dir(settings)
    try:
        staged = await anyio.to_thread.run_sync(_stage, root, config.file, weights.file)
    except OSError as exc:  # _stage removed what it wrote
        if is_disk_full(exc):
            raise storage_full(f"the adapter directory {root}", "adapters", exc) from None
        raise
    try:
        await anyio.to_thread.run_sync(check_fits, staged, state.models)
    except BaseException:
        shutil.rmtree(staged, ignore_errors=True)
        raise
    async with state.adapter_lock:
        # Shielded: a deadline or a hang-up between the local load and the registry bump
        # would leave this replica serving files no other replica knows of, for good.
        with anyio.CancelScope(shield=True):
            info = await _install(state, name, staged, root / name)
            if (shared := state.shared_adapters) is not None:  # once, for every replica
                try:
                    await anyio.to_thread.run_sync(shared.publish, name, root / name)
                except ServiceError:  # 507 (adapter store full) or 503 (store down)
                    await anyio.to_thread.run_sync(_unpublished, state, name, root / name)
                    raise
        return info


def _unpublished(state: AppState, name: str, folder: Path) -> None:
    """Undo this replica's install of an upload the registry never got: unload it and
    forget its version, so the next request loads what the registry names (if anything)."""
    adapters = state.models.engine.adapters  # type: ignore[union-attr]
    if name in adapters.names():
        adapters.delete(name)
    shutil.rmtree(folder, ignore_errors=True)
    if (shared := state.shared_adapters) is not None:
        shared.forget(name)


async def _check_form(request: Request, name: str) -> None:
    form = await request.form()  # parsed already for the parameters: served from cache
    for key in form:
        if key not in _FIELDS:
            raise InvalidRequestError(
                f"unexpected form field {key!r}; send only name, {CONFIG_FILE}, {WEIGHTS_FILE}",
                field=key,
            )
        if len(form.getlist(key)) > 1:
            raise InvalidRequestError(f"form field {key!r} given more than once", field=key)
    if name == "base":
        raise InvalidRequestError("'base' is reserved for the model without adapter", "name")


def _stage(root: Path, config: IO[bytes], weights: IO[bytes]) -> Path:
    """Copy the uploads into a fresh temp dir under `root/.tmp` and validate them there."""
    staged = root / ".tmp" / uuid.uuid4().hex
    staged.mkdir(parents=True)
    try:
        for src, filename in ((config, CONFIG_FILE), (weights, WEIGHTS_FILE)):
            src.seek(0)
            with (staged / filename).open("wb") as dst:
                shutil.copyfileobj(src, dst, 2**20)
                dst.flush()
                os.fsync(dst.fileno())  # durable before the rename that publishes them
        check_config(staged / CONFIG_FILE)
        check_safetensors(staged / WEIGHTS_FILE)
        fsync_dir(staged)
    except BaseException:
        shutil.rmtree(staged, ignore_errors=True)
        raise
    return staged


async def _install(state: AppState, name: str, staged: Path, final: Path) -> AdapterInfo:
    """Swap `staged` in as `final` and load it; on failure put back what was there."""
    adapters = state.models.engine.adapters  # type: ignore[union-attr]
    if name in adapters.names() and adapters.info(name).source == "startup":
        shutil.rmtree(staged, ignore_errors=True)
        raise ConflictError(f"{name!r} is a start-up adapter; pick another name", field="name")
    previous = staged.with_name(staged.name + "-previous") if final.exists() else None
    if previous is not None:
        final.rename(previous)
    staged.rename(final)  # atomic: the adapter appears whole or not at all
    fsync_dir(final.parent)
    try:
        info = await anyio.to_thread.run_sync(adapters.load, name, final, "upload")
    except Exception as exc:
        shutil.rmtree(final, ignore_errors=True)
        if previous is not None:
            previous.rename(final)
            await _reload_quietly(adapters, name, final)
        if not isinstance(exc, ServiceError):
            logger.warning("adapter %r did not load", name, exc_info=exc)
        message = exc.message if isinstance(exc, ServiceError) else str(exc)
        raise InvalidAdapterError(f"the model cannot load this adapter: {message}") from None
    if previous is not None:
        shutil.rmtree(previous, ignore_errors=True)
    logger.info("adapter %r loaded from upload", name)
    return info


async def _reload_quietly(adapters: Any, name: str, path: Path) -> None:
    try:
        await anyio.to_thread.run_sync(adapters.load, name, path, "upload")
    except Exception:
        logger.exception("could not restore the previous adapter %r", name)


@router.get("/adapters", response_model=AdapterList, summary="Loaded adapters")
def list_adapters(state: AppState = Depends(get_ready_state)) -> AdapterList:
    """Every adapter the engine holds (including `base`, the model without adapter)."""
    adapters = state.models.engine.adapters  # type: ignore[union-attr]
    if (shared := state.shared_adapters) is not None:  # uploads through other replicas too
        shared.sync_all()
    return AdapterList(adapters=[adapters.info(n) for n in adapters.names()])


@router.delete(
    "/adapters/{name}",
    status_code=204,
    response_class=Response,
    summary="Unload and delete an uploaded adapter",
    responses=_ERRORS,
)
async def delete_adapter(
    name: str = PathParam(..., description="adapter name"),
    state: AppState = Depends(get_ready_state),
) -> Response:
    """Unload an uploaded adapter and remove its files. Requests already queued with it
    finish first (the engine waits for the running batch)."""
    adapters = state.models.engine.adapters  # type: ignore[union-attr]
    async with state.adapter_lock:
        if name == "base":
            raise ConflictError("'base' is the model itself and cannot be deleted", field="name")
        if (shared := state.shared_adapters) is not None:  # it may come from another replica
            await anyio.to_thread.run_sync(shared.sync, name)
        if name not in adapters.names():
            raise NotFoundError(f"no adapter named {name!r}", field="name")
        if adapters.info(name).source == "startup":
            raise ConflictError(f"{name!r} is a start-up adapter; it cannot be deleted", "name")
        with anyio.CancelScope(shield=True):  # unloaded here means withdrawn everywhere
            await anyio.to_thread.run_sync(adapters.delete, name)
            if shared is not None:  # every replica unloads it on next use
                await anyio.to_thread.run_sync(shared.withdraw, name)
        if ADAPTER_NAME_RE.match(name):
            shutil.rmtree(adapters_dir(state.settings) / name, ignore_errors=True)
    return Response(status_code=204)


async def reload_uploaded_adapters(models: Any, settings: ServiceSettings) -> list[str]:
    """At start-up: load every adapter uploaded in an earlier run; returns their names.

    Leftover temp dirs are removed; an adapter that no longer loads is logged and skipped.
    """
    root = adapters_dir(settings)
    shutil.rmtree(root / ".tmp", ignore_errors=True)
    if not root.is_dir():
        return []
    adapters = models.engine.adapters
    loaded = []
    for path in sorted(root.iterdir()):
        name = path.name
        if not (ADAPTER_NAME_RE.match(name) and (path / WEIGHTS_FILE).is_file()):
            continue
        if name == "base" or name in adapters.names():
            logger.warning("uploaded adapter %r shadowed by a start-up adapter; skipped", name)
            continue
        try:
            await anyio.to_thread.run_sync(adapters.load, name, path, "upload")
            loaded.append(name)
        except Exception:
            logger.exception("could not reload uploaded adapter %r from %s", name, path)
    return loaded

"""What replicas share besides the store: uploaded adapters, stored once, loaded everywhere.

An uploaded adapter's two files are copied once into the shared adapter directory
(`settings.adapter_store`, default `data_dir/adapter-store`) under their content digest, then
the name is pointed at that digest in the store's registry, which bumps its version. Each
replica's engine asks `SharedAdapters.sync(name)` before it serves a name (the engine's
`AdapterRegistry.check`): one indexed query, reused for `REGISTRY_CACHE_S` (1 s) by requests
naming the same adapter; when the registry is ahead of what this replica loaded, the replica
loads (or, for a deleted name, unloads) first; a request meanwhile gets a 503 `adapter_loading`
(clients retry it). So an adapter uploaded through any replica is used by every replica, and
no replica serves an older version under a name than the registry held a second earlier.

Files are written to a temp dir, fsynced and renamed into place before the registry row is
committed, and their digest is checked again before every load: a crash mid-upload leaves at
most an unreferenced temp dir, never a half-written adapter that gets served.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import shutil
import threading
import time
import uuid
from pathlib import Path
from typing import Any

from selfreward_vlm.service.errors import NotReadyError, StoreUnavailableError
from selfreward_vlm.service.store import AdapterRecord, Store
from selfreward_vlm.service.store.faults import is_disk_full, storage_full, wait_cap

logger = logging.getLogger(__name__)

FILES = ("adapter_config.json", "adapter_model.safetensors")
RETRY_FAILED_S = 30.0  # a version whose load failed is tried again after this long
# How long a request's registry lookup serves later requests naming the same adapter (event
# loop only): a store round trip per request, on the loop, stalled every request and probe
# whenever the store was slow or its pool exhausted. The price: another replica's change is
# seen up to this much later (this replica's own uploads and deletes at once).
REGISTRY_CACHE_S = 1.0
_CACHE_NAMES = 1024  # names remembered at most (a client may send any number of names)
LOOP_STORE_WAIT_S = 0.25  # the event loop's registry lookups wait at most this for the store


class AdapterFilesError(NotReadyError):
    """This replica cannot read an adapter's files that the registry names (503)."""

    type = "adapter_unavailable"


class AdapterLoadingError(NotReadyError):
    """This replica is loading the registry's newer version of an adapter (503: retry; the
    client does, with backoff)."""

    type = "adapter_loading"


def adapter_digest(folder: Path) -> str:
    """sha256 over both files' names and bytes: the content address of an adapter."""
    h = hashlib.sha256()
    for name in FILES:
        h.update(name.encode() + b"\0")
        with (folder / name).open("rb") as f:
            while chunk := f.read(2**20):
                h.update(chunk)
        h.update(b"\0")
    return h.hexdigest()


class SharedAdapters:
    """Keeps one replica's engine adapters in step with the store's registry; thread-safe."""

    def __init__(self, store: Store, root: Path, adapters: Any) -> None:
        self.store = store
        self.root = root
        self.adapters = adapters  # the engine's AdapterRegistry
        self.loaded: dict[str, int] = {}  # name -> registry version this replica serves
        self._lock = threading.RLock()
        self._local = threading.local()  # re-entry guard: a load may look names up itself
        self._pending: set[tuple[str, int]] = set()  # loads running in worker threads
        # a failed load, and when: retried after `retry_failed_s` (a shared-dir read can fail
        # for a moment; the version must not stay unavailable until a restart)
        self._failed: dict[tuple[str, int], tuple[AdapterFilesError, float]] = {}
        self.retry_failed_s = RETRY_FAILED_S
        self.cache_s = REGISTRY_CACHE_S
        self._seen: dict[str, tuple[float, AdapterRecord | None]] = {}  # name -> (when, record)
        self._pending_lock = threading.Lock()

    def attach(self, local_root: Path | None = None) -> None:
        """Make the engine sync with the registry before serving any adapter name.

        Adapters this replica already reloaded from its own upload folder (`local_root`) at
        start-up count as loaded when their files are the registry's current version."""
        for record in self.store.adapters() if local_root is not None else []:
            folder = local_root / record.name  # type: ignore[operator]
            if (
                record.digest is not None
                and record.name in self.adapters.names()
                and self.adapters.info(record.name).source == "upload"
                and all((folder / f).is_file() for f in FILES)
                and adapter_digest(folder) == record.digest
            ):
                self.loaded[record.name] = record.version
        self.adapters.sync = self.sync

    # ------------------------------------------------------------------ writing

    def publish(self, name: str, folder: Path) -> AdapterRecord:
        """Store `folder`'s files once (by digest) and point `name` at them; returns the new
        registry record. Called after this replica loaded the same files."""
        digest = adapter_digest(folder)
        target = self.root / digest
        if target.is_dir():
            os.utime(target)  # recent again: gc keeps recent folders (and checks the registry)
        else:
            _store_files(folder, self.root, target)
        with self._lock:
            record = self.store.register_adapter(name, digest)
            self.loaded[name] = record.version
            self._remember(name, record)
        return record

    def withdraw(self, name: str) -> None:
        """Mark `name` deleted in the registry (every replica unloads it on next use)."""
        with self._lock:
            record = self.store.unregister_adapter(name)
            if record is not None:
                self.loaded[name] = record.version
                self._remember(name, record)

    def forget(self, name: str) -> None:
        """Drop what this replica knows of `name` (its next use asks the registry again)."""
        with self._lock:
            self.loaded.pop(name, None)
            self._seen.pop(name, None)

    # ------------------------------------------------------------------ reading

    def sync(self, name: str) -> None:
        """Bring `name` on this replica up to the registry's version (load, replace, unload).

        In the event loop's thread (a route checking a request's adapter) a load would stall
        every request and probe for seconds: it starts in a worker thread instead and this
        request gets a 503 `adapter_loading`, which clients retry; there the registry lookup
        is also reused for `cache_s`."""
        if getattr(self._local, "busy", False) or self._is_startup(name):
            return
        on_loop = _in_event_loop()
        record = self._lookup(name, cached=on_loop)
        if record is None or self.loaded.get(name) == record.version:
            return
        if on_loop:
            self._apply_in_background(record)
            return
        self._apply_now(record)

    def _lookup(self, name: str, cached: bool) -> AdapterRecord | None:
        seen = self._seen.get(name) if cached else None
        if seen is not None and time.monotonic() - seen[0] < self.cache_s:
            return seen[1]
        if not cached:
            record = self.store.adapter(name)
        elif seen is not None and self.store.health.state == "unavailable":
            # The store is down: serve what this replica knew rather than stall the event
            # loop on it (worker threads and /health notice when it is back).
            return seen[1]
        else:
            token = wait_cap.set(LOOP_STORE_WAIT_S)
            try:
                record = self.store.adapter(name)
            except StoreUnavailableError:
                if seen is None:
                    raise
                return seen[1]
            finally:
                wait_cap.reset(token)
        self._remember(name, record)
        return record

    def _remember(self, name: str, record: AdapterRecord | None) -> None:
        if len(self._seen) >= _CACHE_NAMES:
            self._seen.clear()
        self._seen[name] = (time.monotonic(), record)

    def _apply_now(self, record: AdapterRecord) -> None:
        with self._lock:
            self._local.busy = True
            try:
                self._apply(self.store.adapter(record.name) or record)
            finally:
                self._local.busy = False

    def _apply_in_background(self, record: AdapterRecord) -> None:
        """Start (once per version) the load in a thread, then answer 503 meanwhile; a load
        that failed is reported to the requests of the next `retry_failed_s`, then retried."""
        key = (record.name, record.version)
        with self._pending_lock:
            failed, at = self._failed.get(key, (None, 0.0))
            if failed is not None and time.monotonic() - at < self.retry_failed_s:
                raise AdapterFilesError(failed.message, field="model")
            self._failed.pop(key, None)
            if key not in self._pending:
                self._pending.add(key)
                threading.Thread(target=self._load_job, args=(record,), daemon=True).start()
        raise AdapterLoadingError(
            f"adapter {record.name!r} v{record.version} is loading on this replica; retry",
            field="model",
        )

    def _load_job(self, record: AdapterRecord) -> None:
        key = (record.name, record.version)
        try:
            self._apply_now(record)
        except AdapterFilesError as exc:
            self._failed[key] = (exc, time.monotonic())
        except Exception as exc:
            logger.exception("loading adapter %r v%d failed", *key)
            error = AdapterFilesError(f"adapter {key[0]!r} v{key[1]}: {exc}", "model")
            self._failed[key] = (error, time.monotonic())
        finally:
            with self._pending_lock:
                self._pending.discard(key)

    def sync_all(self) -> None:
        """Sync every name in the registry (for listings)."""
        for record in self.store.adapters():
            self.sync(record.name)

    def versions(self) -> dict[str, int]:
        """Registry version of each adapter this replica serves."""
        names = set(self.adapters.names())
        return {n: v for n, v in sorted(self.loaded.items()) if n in names}

    def _is_startup(self, name: str) -> bool:
        return name in self.adapters.names() and self.adapters.info(name).source == "startup"

    def _apply(self, record: AdapterRecord) -> None:
        if self.loaded.get(record.name) == record.version:
            return  # another thread got here first
        if record.deleted or record.digest is None:
            if record.name in self.adapters.names():
                self.adapters.delete(record.name)
            self.loaded[record.name] = record.version
            return
        folder = self.root / record.digest
        if not folder.is_dir() or adapter_digest(folder) != record.digest:
            raise AdapterFilesError(
                f"adapter {record.name!r} v{record.version}: its files ({record.digest[:12]}…) "
                f"are missing or damaged under {self.root}; replicas sharing a store must "
                "share the adapter store directory",
                field="model",
            )
        self.adapters.load(record.name, folder, "upload")
        self.loaded[record.name] = record.version
        logger.info("adapter %r v%d loaded from the shared registry", record.name, record.version)


def _store_files(folder: Path, root: Path, target: Path) -> None:
    """Copy an adapter's files into `target` through a staged, fsynced folder and one
    rename; a full disk leaves nothing behind and is a 507 naming the adapter directory."""
    staged = root / ".tmp" / uuid.uuid4().hex
    try:
        staged.mkdir(parents=True)
        for file in FILES:
            shutil.copyfile(folder / file, staged / file)
            _fsync(staged / file)
    except OSError as exc:
        shutil.rmtree(staged, ignore_errors=True)
        if is_disk_full(exc):
            raise storage_full(
                f"the shared adapter directory {root}", "adapter_store", exc
            ) from None
        raise
    try:
        staged.rename(target)
    except OSError:  # another replica stored the same digest meanwhile
        shutil.rmtree(staged, ignore_errors=True)
    _fsync(root)


def gc_adapter_files(
    store: Store, root: Path, min_age_s: float, dry_run: bool = False
) -> tuple[int, int, int]:
    """Delete the adapter versions (digest folders under `root`) that no adapter name in the
    registry points to and that are older than `min_age_s`, and staging leftovers as old;
    returns `(deleted, bytes_freed, kept)`. Kept: every folder a live name points to, and
    recent ones (an upload stores its files before it points the name at them). A folder is
    moved aside before it is deleted, then the registry is asked again: a name pointed at it
    meanwhile gets it back."""
    if not root.is_dir():
        return 0, 0, 0
    cutoff = time.time() - min_age_s
    live = {r.digest for r in store.adapters() if r.digest}
    deleted = freed = kept = 0
    for folder in sorted(root.iterdir()):
        if folder.name == ".tmp" or not folder.is_dir():
            continue
        if folder.name in live or folder.stat().st_mtime >= cutoff:
            kept += 1
            continue
        size = sum(f.stat().st_size for f in folder.iterdir() if f.is_file())
        if not dry_run:
            trash = root / ".tmp" / f"gc-{folder.name}-{uuid.uuid4().hex[:8]}"
            trash.parent.mkdir(exist_ok=True)
            folder.rename(trash)
            if any(r.digest == folder.name for r in store.adapters()):
                trash.rename(folder)  # published again meanwhile
                kept += 1
                continue
            shutil.rmtree(trash, ignore_errors=True)
        deleted, freed = deleted + 1, freed + size
    tmp = root / ".tmp"
    for leftover in sorted(tmp.iterdir()) if tmp.is_dir() and not dry_run else []:
        if leftover.stat().st_mtime < cutoff:  # a crashed upload's staging folder
            shutil.rmtree(leftover, ignore_errors=True)
    return deleted, freed, kept


def _in_event_loop() -> bool:
    """Whether this thread runs an asyncio event loop (a route's own thread)."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)

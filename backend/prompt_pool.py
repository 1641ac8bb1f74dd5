"""A project's prompt pool: its human annotations (newest, not cancelled, per task) as image + masks, in Redis.

Every web process and worker shares it. Entries are keyed by (task, image field); masks are keyed by
`label_key(control, label)`. The pool version is a digest of what the entries hold, so the model version changes
exactly when the prompts do.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict
from typing import Iterable, Sequence

import numpy as np
import redis
from PIL import Image

from seggpt_core.images import open_image, resize_as_network
from seggpt_core.limits import DEFAULT_MAX_PIXELS

from worker import PromptRef, SystemFault, store_blob, store_prompt_refs
from worker.codec import b64_to_bytes, mask_to_png, png_to_mask
from worker.errors import NotInRedis
from worker.payloads import PromptSetRef

from .keys import POOL_BLOB_TTL, pool_keys
from .label_config import Control
from .ls_format import label_key, masks_from_annotation

__all__ = ["PromptPool", "newest_annotation"]

log = logging.getLogger(__name__)
# Prompt images are kept at most this many pixels on each axis (masks with them): SegGPT resizes every prompt to
# 448x448 whatever its aspect, so an image stored at min(its size, 448) per axis, resized as the network resizes,
# reaches the network with the same pixels. Stored as the smaller of JPEG 90 (4:4:4) and PNG: 500 distinct
# bench/scale.py prompts weigh 31 MB in Redis, against 188 MB at 1024 px on the longer side in their own format
# (bench/pool_storage.py).
POOL_IMAGE_SIDE = 448
SYNC_THREADS = 4


def newest_annotation(annotations: Iterable[dict]) -> dict | None:
    """The newest annotation that was not cancelled (skipped), or None."""
    usable = [a for a in annotations or () if not a.get("was_cancelled") and a.get("result")]
    if not usable:
        return None
    return max(usable, key=lambda a: (a.get("updated_at") or a.get("created_at") or "", a.get("id") or 0))


class _Longer(Exception):
    """An encoding grew as long as the one it competes with: it cannot be chosen."""


class _CappedBuffer(io.BytesIO):
    """A buffer that stops the encoding written into it once it holds `cap` bytes (Pillow writes as it encodes)."""

    def __init__(self, cap: int) -> None:
        super().__init__()
        self.cap, self.total = cap, 0

    def write(self, data) -> int:
        self.total += len(data)
        if self.total >= self.cap:
            raise _Longer
        return super().write(data)


def _smaller_encoding(small: Image.Image) -> bytes:
    """The smaller of JPEG (quality 90, 4:4:4) and PNG (level 1) of `small`, the JPEG on a tie. The PNG stops as
    soon as it is as long as the JPEG: on the noisy scenes of bench/scale.py it always loses, and its encoding took
    15 of the 17 ms both took (bench/pool_sync.py)."""
    # JPEG 90 without chroma subsampling: colors tell look-alike classes apart, and on the noisy scenes of
    # bench/pool_storage.py it is both smaller and closer than the default 95 with 4:2:0 (64 against 67 KB, mean
    # error 1.8 against 2.1 levels); PNG level 1: 4x faster than the default, a little larger
    buffer = io.BytesIO()
    small.save(buffer, format="JPEG", quality=90, subsampling=0)
    jpeg = buffer.getvalue()
    capped = _CappedBuffer(len(jpeg))
    try:
        small.save(capped, format="PNG", compress_level=1)
    except _Longer:
        return jpeg
    return capped.getvalue()


def _bounded(data: bytes, image, masks: dict[str, np.ndarray]):
    """The prompt image (file bytes and image) and its masks at most POOL_IMAGE_SIDE on each axis. A resized image
    is re-encoded upright (EXIF orientation applied) as the smaller of JPEG (quality 90, 4:4:4) and PNG: flat synthetic
    images stay lossless, noisy textured ones take under half their PNG bytes (64 against 148 KB)."""
    size = (min(image.width, POOL_IMAGE_SIDE), min(image.height, POOL_IMAGE_SIDE))
    if size == image.size:
        return data, image, masks
    small = resize_as_network(image, (size[1], size[0]))
    shrunk = {label: np.asarray(Image.fromarray(mask).resize(size, Image.NEAREST)) for label, mask in masks.items()}
    return _smaller_encoding(small), small, shrunk


class PromptPool:
    def __init__(self, connection: redis.Redis, project: int) -> None:
        self.connection = connection
        self.project = int(project)
        self.keys = pool_keys(self.project)
        self.key = self.keys.entries

    # ---- reading -------------------------------------------------------------------------------------------
    def entries(self) -> list[dict]:
        return [json.loads(v) for v in self.connection.hvals(self.key)]

    def size(self) -> int:
        return int(self.connection.hlen(self.key))

    def version(self) -> str:
        """Digest of the pool's content: the same annotations give the same version. Cached in Redis and dropped
        on every write, because Label Studio asks for it (through /setup) before every prediction."""
        # Tagged with the write generation read before the entries: a write racing this computation bumps the
        # generation, so the value computed here is never served for the newer content.
        generation = (self.connection.get(self.keys.generation) or b"0").decode()
        cached = (self.connection.get(self.keys.version) or b"").decode()
        if cached.startswith(f"{generation}:"):
            return cached.split(":", 1)[1]
        items = sorted((e["entry"], e["annotation"], e["updated_at"], e["digest"]) for e in self.entries())
        learned = sorted(self.learned_prompts().items())
        excluded = sorted(self.excluded())
        document = [items, learned] if learned else items
        if excluded:
            document = {"entries": document, "excluded": excluded}  # leaving a prompt out changes the predictions
        version = hashlib.sha256(json.dumps(document).encode()).hexdigest()[:16]
        self.connection.set(self.keys.version, f"{generation}:{version}")
        return version

    def _changed(self) -> None:
        self.connection.incr(self.keys.generation)

    def excluded(self) -> set[int]:
        """Annotation ids left out of the prompts (`seggpt-ls prompts --exclude`); the annotations stay in Label Studio."""
        return {int(v) for v in self.connection.smembers(self.keys.excluded)}

    def set_excluded(self, annotation_ids: Iterable[int], excluded: bool = True) -> None:
        ids = [int(a) for a in annotation_ids]
        if ids:
            (self.connection.sadd if excluded else self.connection.srem)(self.keys.excluded, *ids)
            self._changed()

    def learned_prompts(self) -> dict[str, str]:
        """image field -> digest of its learned (tuned) prompt, for the fields that have one."""
        return {k.decode(): v.decode() for k, v in self.connection.hgetall(self.keys.learned).items()}

    def set_learned_prompt(self, data_key: str, digest: str) -> None:
        """Use the tuned prompt `digest` (see `worker.store_learned_prompt`) for `data_key` from now on."""
        self.connection.hset(self.keys.learned, data_key, digest)
        self._changed()

    def clear_learned_prompts(self) -> None:
        self.connection.delete(self.keys.learned)
        self._changed()

    def prompt_set(self, data_key: str, controls: Sequence[Control], max_per_label: int, exclude: Iterable[int] = ()) -> PromptSetRef | None:
        return self.prompt_set_with_sources(data_key, controls, max_per_label, exclude)[0]

    def prompt_set_with_sources(self, data_key: str, controls: Sequence[Control], max_per_label: int,
                                exclude: Iterable[int] = ()) -> tuple[PromptSetRef | None, list]:
        """Store the candidate prompts for the image field `data_key`, newest first: for each label, up to
        `max_per_label` of the newest entries that annotate it. Workers pick K per target from these.
        A learned prompt of the field, when there is one, comes along and predicts the labels it was tuned on.
        None when the field has neither. Also returns the annotation id of each prompt, in the set's order.
        Entries of excluded annotations (`exclude`, SEGGPT_EXCLUDE_PROMPTS, and the pool's own excluded set)
        are left out."""
        learned = self.learned_prompts().get(data_key)
        wanted = {label_key(c.name, label) for c in controls for label in c.labels}
        left_out = self.excluded() | {int(a) for a in exclude}
        entries = [e for e in self.entries() if e["data_key"] == data_key and e["annotation"] not in left_out]
        entries.sort(key=lambda e: (e["updated_at"], str(e["annotation"])), reverse=True)
        chosen: dict[str, set[str]] = {}
        for label in sorted(wanted):
            for entry in [e for e in entries if label in e["masks"]][:max_per_label]:
                chosen.setdefault(entry["entry"], set()).add(label)
        chosen_entries = [e for e in entries if e["entry"] in chosen]  # newest first: "recent" relies on this order
        with self.connection.pipeline(transaction=False) as pipe:
            for entry in chosen_entries:
                pipe.exists(entry["image"]["blob"])
            present = pipe.execute()
        refs, sources = [], []
        for entry, exists in zip(chosen_entries, present):
            if not exists:
                log.warning("prompt image of task %s is gone from Redis; dropping the entry", entry["task"])
                self.connection.hdel(self.key, entry["entry"])
                self._changed()
                continue
            # references to the pool's own blobs: a request stores a few hundred bytes, never the images again
            refs.append(PromptRef(entry["image"]["blob"], {label: self._mask_blob(entry, label) for label in sorted(chosen[entry["entry"]])}))
            sources.append(entry["annotation"])
        if not refs:
            return (PromptSetRef(None, learned) if learned else None), []
        return PromptSetRef(store_prompt_refs(self.connection, refs), learned), sources

    def _mask_blob(self, entry: dict, label: str) -> str:
        value = entry["masks"][label]
        if isinstance(value, dict):
            return value["blob"]
        return store_blob(self.connection, b64_to_bytes(value), ttl=POOL_BLOB_TTL)["blob"]  # an entry from before blobs

    def entry_masks(self, entry: dict) -> dict[str, np.ndarray]:
        """An entry's masks, decoded (whichever way the entry stores them)."""
        masks = {}
        for label, value in entry["masks"].items():
            data = self.connection.get(value["blob"]) if isinstance(value, dict) else b64_to_bytes(value)
            if data is None:
                raise NotInRedis(f"mask {label!r} of task {entry['task']} is gone from Redis")
            masks[label] = png_to_mask(data)
        return masks

    # ---- writing -------------------------------------------------------------------------------------------
    def upsert(self, task: dict, annotation: dict, controls: Sequence[Control], fetch, max_pixels: int = DEFAULT_MAX_PIXELS) -> list[str]:
        """Add or replace the entries of `task` from `annotation`; `fetch(value, task_id) -> bytes`; images larger
        than `max_pixels` (SEGGPT_MAX_PIXELS) are refused.

        Returns the labels stored. Raises AnnotationError / seggpt_core.ImageError / MediaError for an entry
        that cannot be used (the pool is left as it was for that task).
        """
        stored = []
        for data_key in sorted({c.data_key for c in controls}):
            field_controls = [c for c in controls if c.data_key == data_key]
            value = (task.get("data") or {}).get(data_key)
            entry_id = f"{task['id']}:{data_key}"
            if value is None:
                continue
            controls_digest = hashlib.sha256(json.dumps([asdict(c) for c in field_controls], sort_keys=True).encode()).hexdigest()[:16]
            unchanged = self._unchanged(entry_id, annotation, value, controls_digest)
            if unchanged is not None:
                stored.extend(unchanged)  # the same annotation of the same image: nothing to fetch or rewrite
                continue
            data = fetch(value, task["id"])
            image = open_image(data, where=f"task {task['id']}", max_pixels=max_pixels)
            masks = masks_from_annotation(annotation.get("result"), field_controls, (image.height, image.width))
            if not masks:
                self.connection.hdel(self.key, entry_id)
                self._changed()
                continue
            data, image, masks = _bounded(data, image, masks)
            encoded = {label: mask_to_png(mask) for label, mask in masks.items()}
            entry = {
                "entry": entry_id,
                "task": task["id"],
                "data_key": data_key,
                "annotation": annotation.get("id"),
                "value": value,
                "controls": controls_digest,
                "updated_at": annotation.get("updated_at") or annotation.get("created_at") or "",
                "image": store_blob(self.connection, data, ttl=POOL_BLOB_TTL),
                "size": [image.height, image.width],
                "masks": {label: store_blob(self.connection, png, ttl=POOL_BLOB_TTL) for label, png in encoded.items()},
                "digest": hashlib.sha256(b"".join(label.encode() + png for label, png in sorted(encoded.items()))).hexdigest()[:16],
            }
            self.connection.hset(self.key, entry_id, json.dumps(entry))
            self._changed()
            stored.extend(masks)
        return stored

    def _unchanged(self, entry_id: str, annotation: dict, value: str, controls_digest: str) -> list[str] | None:
        """The entry's label keys if it already holds this annotation, as last updated, of this image, read with
        these controls."""
        raw = self.connection.hget(self.key, entry_id)
        if raw is None:
            return None
        entry = json.loads(raw)
        same = (entry.get("annotation") == annotation.get("id") and entry.get("value") == value and entry.get("controls") == controls_digest
                and entry.get("updated_at") == (annotation.get("updated_at") or annotation.get("created_at") or "")
                and all(isinstance(m, dict) for m in entry["masks"].values()) and self.connection.exists(entry["image"]["blob"]))
        return list(entry["masks"]) if same else None

    def remove_task(self, task_id: int) -> int:
        doomed = [e["entry"] for e in self.entries() if e["task"] == task_id]
        removed = int(self.connection.hdel(self.key, *doomed)) if doomed else 0
        self._changed()
        return removed

    def remove_annotations(self, annotation_ids: Iterable[int]) -> int:
        ids = set(annotation_ids)
        doomed = [e["entry"] for e in self.entries() if e["annotation"] in ids]
        removed = int(self.connection.hdel(self.key, *doomed)) if doomed else 0
        self._changed()
        return removed

    def save_controls(self, controls: Sequence[Control], label_config: str) -> None:
        self.connection.set(self.keys.config, json.dumps({"label_config": label_config, "controls": [asdict(c) for c in controls]}))

    def load_controls(self) -> tuple[list[Control], str] | None:
        raw = self.connection.get(self.keys.config)
        if raw is None:
            return None
        body = json.loads(raw)
        return [Control(**{**c, "labels": tuple(c["labels"])}) for c in body["controls"]], body["label_config"]


def sync_from_label_studio(pool: PromptPool, client, fetch, controls: Sequence[Control], max_pixels: int = DEFAULT_MAX_PIXELS) -> dict:
    """Rebuild the pool from the newest usable annotation of each of the project's annotated tasks (images up to
    `max_pixels`); returns counts, per-task errors and the ids of the tasks whose annotation was read (`annotated`)."""
    seen, errors, stored = set(), {}, 0

    def settle(task_id, future) -> None:
        nonlocal stored
        try:
            if future.result():
                stored += 1
        except SystemFault:
            raise  # Label Studio's fault (a rejected token, a give-up), not the annotation's: the sync fails whole
        except Exception as exc:  # one bad annotation must not stop the sync; the reason is kept
            errors[task_id] = f"{type(exc).__name__}: {exc}"
            log.warning("task %s: annotation not usable as a prompt: %s", task_id, exc)

    # Fetching and decoding overlap across a few threads (downloads wait on the network, Pillow releases the GIL):
    # the 100-annotation sync of bench/scale.py is the bootstrap's first step, before any task is queued.
    with ThreadPoolExecutor(SYNC_THREADS, thread_name_prefix="pool-sync") as threads:
        running = []
        for task in client.iter_tasks(pool.project, annotated_only=True):
            annotation = newest_annotation(task.get("annotations") or [])
            if annotation is None:
                continue
            seen.add(task["id"])
            running.append((task["id"], threads.submit(pool.upsert, task, annotation, controls, fetch, max_pixels)))
            while len(running) > 4 * SYNC_THREADS:  # bounded: a big pool is never held whole
                settle(*running.pop(0))
        for task_id, future in running:
            settle(task_id, future)
    for entry in pool.entries():
        if entry["task"] not in seen:
            pool.remove_task(entry["task"])
    return {"entries": stored, "errors": errors, "annotated": seen}

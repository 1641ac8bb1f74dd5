"""Prompt sets in Redis, addressed by the hash of their content, so a worker prepares each set once.

A stored set is JSON: `{"prompts": [{"image": <base64 file bytes>, "masks": {label: <base64 PNG>}}]}`.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Mapping, Sequence

import numpy as np
import redis

from .codec import b64_to_bytes, bytes_to_b64, mask_to_b64png, png_to_mask
from .defaults import PROMPT_SET_TTL
from .errors import NotInRedis
from .keys import learned_prompt_key, prompt_set_key

__all__ = ["PromptRecord", "PromptRef", "store_prompt_refs", "store_prompt_set", "load_prompt_set", "prompt_set_key", "store_learned_prompt", "load_learned_prompt"]



@dataclass(frozen=True)
class PromptRef:
    """One annotated image by reference: the blob keys (see `store_blob`) of its file bytes and of each label's
    PNG mask. A prompt set of references stores a few hundred bytes, whatever the images weigh."""

    image: str
    masks: Mapping[str, str]


@dataclass(frozen=True)
class PromptRecord:
    """One annotated image as stored: its encoded file bytes and one boolean mask per label."""

    image: bytes
    masks: Mapping[str, np.ndarray]


def store_prompt_set(connection: redis.Redis, prompts: Sequence[PromptRecord]) -> str:
    """Store `prompts` and return their content digest (the same content always gives the same digest)."""
    if not prompts:
        raise ValueError("a prompt set needs at least one prompt")
    document = {
        "prompts": [
            {"image": bytes_to_b64(p.image), "masks": {label: mask_to_b64png(m) for label, m in sorted(p.masks.items())}}
            for p in prompts
        ]
    }
    body = json.dumps(document, sort_keys=True, separators=(",", ":"))
    digest = hashlib.sha256(body.encode()).hexdigest()
    connection.set(prompt_set_key(digest), body, ex=PROMPT_SET_TTL)
    return digest


def store_prompt_refs(connection: redis.Redis, prompts: Sequence[PromptRef]) -> str:
    """Store a prompt set of references to blobs already in Redis; returns its content digest (blob keys are
    content digests, so equal content gives an equal digest here too)."""
    if not prompts:
        raise ValueError("a prompt set needs at least one prompt")
    document = {"prompts": [{"image": {"blob": p.image}, "masks": {label: {"blob": key} for label, key in sorted(p.masks.items())}} for p in prompts]}
    body = json.dumps(document, sort_keys=True, separators=(",", ":"))
    digest = hashlib.sha256(body.encode()).hexdigest()
    key = prompt_set_key(digest)
    # same content, same key: renew its life instead of writing it again
    if not connection.expire(key, PROMPT_SET_TTL):
        connection.set(key, body, ex=PROMPT_SET_TTL)
    return digest


def store_learned_prompt(connection: redis.Redis, data: bytes) -> str:
    """Store a learned prompt (`seggpt_core.prompt_tuning.LearnedPrompt.to_bytes()`); returns its content digest.
    Kept without expiry: the model version of a project names it until the prompt is tuned again."""
    digest = hashlib.sha256(data).hexdigest()[:32]
    connection.set(learned_prompt_key(digest), data)
    return digest


def load_learned_prompt(connection: redis.Redis, digest: str):
    """The `LearnedPrompt` stored under `digest`; NotInRedis if it is not in Redis."""
    from seggpt_core.prompt_tuning import LearnedPrompt  # torch: not at the top (see backend/__init__.py)

    data = connection.get(learned_prompt_key(digest))
    if data is None:
        raise NotInRedis(f"learned prompt {digest[:12]} is not in Redis")
    return LearnedPrompt.from_bytes(data, where=f"learned prompt {digest[:12]}")


def load_prompt_set(connection: redis.Redis, digest: str) -> list:
    """The `seggpt_core.Prompt`s of a stored set; NotInRedis if it is not (or no longer) stored."""
    from seggpt_core import Prompt  # torch: not at the top (see backend/__init__.py)

    body = connection.get(prompt_set_key(digest))
    if body is None:
        raise NotInRedis(f"prompt set {digest[:12]} is not in Redis (expired, or never stored)")
    connection.expire(prompt_set_key(digest), PROMPT_SET_TTL)
    document = json.loads(body)

    def blob(value) -> bytes:
        if isinstance(value, str):
            return b64_to_bytes(value)  # stored inline
        data = connection.get(value["blob"])
        if data is None:
            raise NotInRedis(f"prompt set {digest[:12]}: blob {value['blob']} is not in Redis")
        return data

    return [Prompt(blob(p["image"]), {label: png_to_mask(blob(m)) for label, m in p["masks"].items()}) for p in document["prompts"]]

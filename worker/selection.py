"""Which K prompts of a prompt set each target uses, per label: the most `similar` (default) or most `recent`.

Prompt sets are stored newest first, so `recent` takes the first K annotating each label. `similar` ranks them by
a cheap image embedding, computed once per prompt (per worker) and once per target.
"""

from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np

from seggpt_core.embedding import most_similar

STRATEGIES = ("similar", "recent")

__all__ = ["STRATEGIES", "select"]


def select(
    annotated_by: Mapping[str, Sequence[int]],
    k: int,
    strategy: str,
    prompt_embeddings: Sequence[np.ndarray] | None = None,
    target_embedding: np.ndarray | None = None,
) -> dict[str, list[int]]:
    if strategy not in STRATEGIES:
        raise ValueError(f"prompt strategy must be one of {STRATEGIES}, got {strategy!r}")
    chosen = {}
    for label, indices in annotated_by.items():
        indices = list(indices)
        if strategy == "recent" or len(indices) <= k:
            chosen[label] = sorted(indices[:k])
        else:
            chosen[label] = most_similar(target_embedding, list(prompt_embeddings), indices, k)
    return chosen

"""A label's mask at the target's original size, kept as the model-sized index map it is a nearest upsampling of.

A 1920x1080 mask is 2 M booleans; the index map it comes from is 448x448. Most consumers only ask whether the
mask is empty, for its area and for its run-length encoding, all of which the small map answers exactly, so the
full-size array is built only when something reads the pixels (`np.asarray(mask)`, indexing, `astype`).
`bench/cpu_cost_per_task.py` measured the difference: the upsampling, the per-label comparisons and the full-size
scans of the brush RLE were about 2.7 ms of a task's 28.7.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
from PIL import Image

from .transforms import resize_label_map

__all__ = ["UpsampledMask", "nearest_source_indices"]


@lru_cache(maxsize=64)
def nearest_source_indices(source: int, target: int) -> np.ndarray:
    """For each of `target` output positions, the source position Pillow's NEAREST resize reads.

    Derived from Pillow itself (resizing a ramp of positions), so that the lazy mask equals
    `transforms.resize_label_map` bit for bit."""
    ramp = Image.fromarray(np.arange(source, dtype=np.int32)[None, :], mode="I")
    indices = np.asarray(ramp.resize((target, 1), Image.NEAREST))[0].astype(np.intp)
    indices.setflags(write=False)
    return indices


@lru_cache(maxsize=64)
def _axis(source: int, target: int) -> tuple[np.ndarray, ...]:
    """For one axis: the source positions read, the first output position and the output count of each, and the
    index (into those) that every output position reads."""
    indices = nearest_source_indices(source, target)
    used, first, counts = np.unique(indices, return_index=True, return_counts=True)
    of = np.repeat(np.arange(len(used)), counts)
    for array in (used, first, counts, of):
        array.setflags(write=False)
    return used, first, counts, of


class UpsampledMask:
    """`label_map == value`, nearest-upsampled to `size` (height, width), as a read-only boolean mask."""

    dtype = np.dtype(bool)
    ndim = 2

    def __init__(self, label_map: np.ndarray, value: int, size: tuple[int, int]) -> None:
        self.label_map = label_map
        self.value = value
        self.shape = (int(size[0]), int(size[1]))
        self._full: np.ndarray | None = None
        self._used: tuple[np.ndarray, ...] | None = None

    def _grid(self) -> tuple[np.ndarray, ...]:
        """The source cells the output reads (a downsampling skips some): their mask, the used source row of each
        output row, the first output row and the number of output rows of each used source row, and the first
        output column of each used source column (output positions only grow with source positions)."""
        if self._used is None:
            used_rows, first_row, row_counts, row_of = _axis(self.label_map.shape[0], self.shape[0])
            used_cols, first_col, _, _ = _axis(self.label_map.shape[1], self.shape[1])
            cells = self.label_map == self.value
            if len(used_rows) < cells.shape[0] or len(used_cols) < cells.shape[1]:  # a downsampling skips some
                cells = cells[np.ix_(used_rows, used_cols)]
            self._used = (cells, row_of, first_row, row_counts, first_col)
        return self._used

    def any(self) -> bool:
        return bool(self._grid()[0].any())

    def sum(self) -> int:
        cells, _, _, row_counts, first_col = self._grid()
        col_counts = np.diff(np.append(first_col, self.shape[1]))
        return int(row_counts @ cells.astype(np.int64) @ col_counts)

    def run_starts(self) -> tuple[np.ndarray, bool]:
        """Where the row-major flattened mask changes value (sorted flat positions, 0 first) and the value of
        its first pixel: what a run-length encoder needs, without the full-size array."""
        cells, row_of, first_row, row_counts, first_col = self._grid()
        width = self.shape[1]
        # changes inside a row: found once per source row, repeated for each output row that copies it
        changes = np.flatnonzero(cells[:, 1:] != cells[:, :-1])  # flat: several times faster than a 2-D nonzero
        source_row, column = np.divmod(changes, cells.shape[1] - 1)
        copies = row_counts[source_row]
        offsets = np.arange(copies.sum()) - np.repeat(np.cumsum(copies) - copies, copies)
        out_rows = np.repeat(first_row[source_row], copies) + offsets
        inside = out_rows * width + np.repeat(first_col[column + 1], copies)
        # changes across rows: the last pixel of one row against the first of the next
        across = np.flatnonzero(cells[row_of[1:], 0] != cells[row_of[:-1], -1]) + 1
        starts = np.sort(np.concatenate([np.zeros(1, np.intp), across * width, inside]))
        return starts, bool(cells[0, 0])

    def __array__(self, dtype: object = None, copy: object = None) -> np.ndarray:
        if self._full is None:
            # the eager path's own resize (Pillow's NEAREST, several times faster than fancy indexing at this size)
            self._full = resize_label_map(self.label_map == self.value, self.shape).view(bool)
        if dtype is not None and np.dtype(dtype) != self.dtype:
            return self._full.astype(dtype)
        return self._full.copy() if copy else self._full

    def astype(self, dtype: object) -> np.ndarray:
        return np.asarray(self).astype(dtype)

    def __getitem__(self, index: object) -> np.ndarray:
        return np.asarray(self)[index]

    def __repr__(self) -> str:
        return f"UpsampledMask(value={self.value}, size={self.shape}, from={self.label_map.shape})"

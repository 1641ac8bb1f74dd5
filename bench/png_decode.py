"""PNG decoding on one core: ours (libspng for 8-bit RGB/RGBA/gray PNGs, through `open_reduced`, as a worker opens a
task's image) against Pillow's decoder (the naive path: `Image.open` and `to_rgb`, as before), side by side and
interleaved, on bench/scale.py's images (640x480 to 1920x1080 scenes, saved as PNG by Pillow).

Prints the median ms per size and the mean over the sizes; the last line is `ratio=<ours/pillow>`.

    python bench/png_decode.py [--repeats 9]
"""

from __future__ import annotations

import argparse
import io
import statistics
import sys
import time
from pathlib import Path

import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.scale import SIZES, make_images  # noqa: E402
from seggpt_core.transforms import open_reduced, to_rgb  # noqa: E402


def pillow(data: bytes) -> Image.Image:
    image = to_rgb(Image.open(io.BytesIO(data)))
    image.load()
    return image


def ours(data: bytes) -> Image.Image:
    return open_reduced(data, (448, 448))[0]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=9)
    args = parser.parse_args()
    torch.set_num_threads(1)
    _, images = make_images(2 * len(SIZES))
    pngs = {}
    for image in images:
        if image["ext"] == "png":
            pngs.setdefault(image["size"], image["bytes"])
    print(f"{'size (h x w)':>14} {'bytes':>9} {'pillow ms':>10} {'ours ms':>8} {'ratio':>6}")
    totals = {"pillow": [], "ours": []}
    for size, data in sorted(pngs.items()):
        times = {"pillow": [], "ours": []}
        for _ in range(args.repeats):
            for name, decode in (("pillow", pillow), ("ours", ours)):
                started = time.process_time()
                decode(data)
                times[name].append(1000 * (time.process_time() - started))
        medians = {name: statistics.median(values) for name, values in times.items()}
        for name in totals:
            totals[name].append(medians[name])
        print(f"{size[0]:>6} x {size[1]:<6} {len(data):>9} {medians['pillow']:>10.2f} {medians['ours']:>8.2f} {medians['ours'] / medians['pillow']:>6.3f}")
    mean = {name: statistics.mean(values) for name, values in totals.items()}
    print(f"{'mean':>14} {'':>9} {mean['pillow']:>10.2f} {mean['ours']:>8.2f}")
    print(f"ratio={mean['ours'] / mean['pillow']:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

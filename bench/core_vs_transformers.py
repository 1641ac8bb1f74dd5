"""Our SegGPT forward against transformers' SegGptForImageSegmentation: same weights, same inputs, CPU fp32.

Runs are interleaved in one process (transformers, ours full canvas, ours target-only, repeated) so that machine
noise hits all of them alike. Prints median seconds and peak resident-memory growth per forward, the max abs
difference of the outputs, and a last line `ratio=<ours/transformers>` for the full-canvas forward (identical
output). The target-only forward is what the predictor runs; its ratio is printed on the line above.

    python bench/core_vs_transformers.py [--config vit-large|tiny] [--repeats 3] [--prompts 1]
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import threading
import time

import torch


def rss_bytes() -> int:
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def measure(fn) -> tuple[float, int, torch.Tensor]:
    """Seconds, peak RSS growth in bytes (sampled every 5 ms), and the output of fn()."""
    base = rss_bytes()
    peak = [base]
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            peak[0] = max(peak[0], rss_bytes())
            time.sleep(0.005)

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    start = time.perf_counter()
    with torch.no_grad():
        out = fn()
    seconds = time.perf_counter() - start
    done.set()
    thread.join()
    return seconds, max(peak[0], rss_bytes()) - base, out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="vit-large", choices=["vit-large", "tiny"])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--prompts", type=int, default=1, help="K prompts with feature ensemble (K>1)")
    args = parser.parse_args()

    from transformers import SegGptConfig as HfConfig
    from transformers import SegGptForImageSegmentation

    from seggpt_core import load_model, variant_config

    torch.manual_seed(0)
    ours_config = variant_config(args.config)
    hf = SegGptForImageSegmentation(HfConfig(**{k: v for k, v in ours_config.to_dict().items() if k not in ("architectures", "model_type")})).eval()
    with tempfile.TemporaryDirectory() as directory:
        hf.save_pretrained(directory)
        ours = load_model(directory, device="cpu", dtype=torch.float32)
    k = args.prompts
    h, w = ours_config.half_size
    target = torch.randn(1, 3, h, w).expand(k, -1, -1, -1).contiguous()
    prompts = torch.randn(k, 3, h, w)
    masks = torch.randn(k, 3, h, w)
    inputs = dict(pixel_values=target, prompt_pixel_values=prompts, prompt_masks=masks)

    runs = {
        "transformers": lambda: hf(**inputs, feature_ensemble=k > 1).pred_masks,
        "ours_canvas": lambda: ours(**inputs, num_prompts=k),
        "ours_target_only": lambda: ours(**inputs, num_prompts=k, target_only=True),
    }
    for fn in runs.values():  # warm-up: allocator, caches, oneDNN primitives
        measure(fn)
    times = {name: [] for name in runs}
    peaks = {name: [] for name in runs}
    outs = {}
    for _ in range(args.repeats):
        for name, fn in runs.items():
            seconds, peak, out = measure(fn)
            times[name].append(seconds)
            peaks[name].append(peak)
            outs[name] = out
    print(f"config={args.config} prompts={k} threads={torch.get_num_threads()} repeats={args.repeats} torch={torch.__version__}")
    for name in runs:
        print(f"{name:18s} median_s={statistics.median(times[name]):.3f} peak_rss_growth_mb={max(peaks[name]) / 2**20:.0f}")
    if k == 1:
        print(f"max_abs_diff_canvas={(outs['ours_canvas'] - outs['transformers']).abs().max().item():.2e}")
        diff_target = (outs["ours_target_only"] - outs["transformers"][:, :, h:]).abs().max().item()
        print(f"max_abs_diff_target={diff_target:.2e}")
    base = statistics.median(times["transformers"])
    print(f"ratio_target_only={statistics.median(times['ours_target_only']) / base:.3f}")
    print(f"ratio={statistics.median(times['ours_canvas']) / base:.3f}")


if __name__ == "__main__":
    main()

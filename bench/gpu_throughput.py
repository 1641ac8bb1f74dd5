"""On an NVIDIA GPU: our bf16 batched inference against transformers in its best setting, ViT-L config.

- ours: bf16, T targets x K prompts per forward (SDPA, target-only decoding), the feature ensemble per target;
- transformers: SegGptForImageSegmentation in bf16, eager attention (its only kind), one target per forward
  (its ensemble averages the whole batch, so it cannot batch targets).
Same random ViT-L weights, same inputs. Prints images/s and peak GPU memory of each, and the mask IoU of our bf16
masks against our fp32 masks (goal >= 0.99). The last line is `ratio=<ours images/s / transformers images/s>`
(goal >= 4). Meant to finish within 8 minutes on an H100/H200-class card.

    python bench/gpu_throughput.py [--targets 64] [--prompts 3] [--batch-targets 16]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def timed(fn, device) -> float:
    torch.cuda.synchronize(device)
    started = time.perf_counter()
    fn()
    torch.cuda.synchronize(device)
    return time.perf_counter() - started


def masks_from(canvas: torch.Tensor, palette) -> torch.Tensor:
    from seggpt_core.palette import decode_colors
    from seggpt_core.transforms import denormalize

    return torch.from_numpy(__import__("numpy").stack([decode_colors(rgb, palette)[0] for rgb in denormalize(canvas)]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--targets", type=int, default=64)
    parser.add_argument("--prompts", type=int, default=3)
    parser.add_argument("--batch-targets", type=int, default=16)
    args = parser.parse_args()
    if not torch.cuda.is_available():
        print("no CUDA device: run this on a machine with an NVIDIA GPU")
        sys.exit(2)
    device = torch.device("cuda")
    from transformers import SegGptConfig as HfConfig
    from transformers import SegGptForImageSegmentation

    from seggpt_core import load_model, make_palette

    torch.manual_seed(0)
    hf = SegGptForImageSegmentation(HfConfig()).eval()
    with tempfile.TemporaryDirectory() as directory:
        hf.save_pretrained(directory)
        ours = load_model(directory, device=device, dtype=torch.bfloat16)
        ours_fp32 = load_model(directory, device=device, dtype=torch.float32)
    hf = hf.to(device=device, dtype=torch.bfloat16)
    k, t, b = args.prompts, args.targets, args.batch_targets
    generator = torch.Generator().manual_seed(1)
    targets = torch.randn(t, 3, 448, 448, generator=generator)
    prompts = torch.randn(k, 3, 448, 448, generator=generator)
    palette = make_palette(1)
    masks = torch.from_numpy(palette[(torch.rand(k, 448, 448, generator=generator) > 0.5).long().numpy()]).permute(0, 3, 1, 2).float()
    masks = (masks / 255 - torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)) / torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)

    def run_ours(model, dtype):
        outputs = []
        with torch.no_grad():
            for start in range(0, t, b):
                chunk = targets[start : start + b].to(device, dtype)
                count = chunk.shape[0]
                outputs.append(model(chunk.repeat_interleave(k, 0), prompts.to(device, dtype).repeat(count, 1, 1, 1),
                                     masks.to(device, dtype).repeat(count, 1, 1, 1), num_prompts=k, target_only=True).float().cpu())
        return torch.cat(outputs)

    def run_hf():
        with torch.no_grad():
            for index in range(t):
                hf(pixel_values=targets[index : index + 1].expand(k, -1, -1, -1).to(device, torch.bfloat16),
                   prompt_pixel_values=prompts.to(device, torch.bfloat16), prompt_masks=masks.to(device, torch.bfloat16),
                   feature_ensemble=k > 1)

    run_ours(ours, torch.bfloat16)  # warm-up
    run_hf()
    torch.cuda.reset_peak_memory_stats(device)
    ours_seconds = timed(lambda: run_ours(ours, torch.bfloat16), device)
    ours_memory = torch.cuda.max_memory_allocated(device) / 2**30
    torch.cuda.reset_peak_memory_stats(device)
    hf_seconds = timed(run_hf, device)
    hf_memory = torch.cuda.max_memory_allocated(device) / 2**30
    bf16 = masks_from(run_ours(ours, torch.bfloat16), palette)
    fp32 = masks_from(run_ours(ours_fp32, torch.float32), palette)
    intersection = ((bf16 == 1) & (fp32 == 1)).sum().item()
    union = ((bf16 == 1) | (fp32 == 1)).sum().item()
    iou = intersection / union if union else 1.0
    print(f"device={torch.cuda.get_device_name(device)} targets={t} prompts={k} batch_targets={b} torch={torch.__version__}")
    print(f"ours_bf16_batched images_per_s={t / ours_seconds:.2f} peak_gpu_gib={ours_memory:.2f}")
    print(f"transformers_bf16_eager images_per_s={t / hf_seconds:.2f} peak_gpu_gib={hf_memory:.2f}")
    print(f"mask_iou_bf16_vs_fp32={iou:.4f} (goal >= 0.99)")
    print(f"ratio={(t / ours_seconds) / (t / hf_seconds):.3f}")


if __name__ == "__main__":
    main()

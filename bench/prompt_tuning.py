"""Does a tuned prompt beat one-shot? Measured side by side on held-out targets of synthetic projects.

A project is a fixed set of 3 or 4 appearance classes; its scenes each show the label's class beside others, with
instances that vary (`--jitter`, default 32: brightness and hue spread so far that one scene cannot show them all,
the "varied" setting of bench/quality.py; at 16 one scene already comes within about 0.02 of the model's ceiling).
For each of `--projects` projects: `--examples` labeled scenes (the project's labeled tasks) and `--targets`
held-out scenes. Baselines: one-shot from the first example, the example tuning starts from alone ("start"), and
the K-shot feature ensemble of the first K examples; then the prompt is tuned on all examples, SegGPT frozen
(`seggpt_core.research.evaluation.evaluate_prompt_tuning`). Prints mIoU per method and project; the last line is
`tuned_minus_one_shot=<difference> ratio=<tuned mIoU / one-shot mIoU>`.

    python bench/prompt_tuning.py [--weights tiny-appearance] [--projects 5] [--examples 16] [--targets 40] [--steps 150] [--jitter 32]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--weights", default="tiny-appearance")
    parser.add_argument("--projects", type=int, default=5)
    parser.add_argument("--examples", type=int, default=16)
    parser.add_argument("--targets", type=int, default=40)
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--k", type=int, default=5)
    parser.add_argument("--lr", type=float, default=None, help="tuning learning rate (default: TuneSettings')")
    parser.add_argument("--jitter", type=float, default=32.0)
    args = parser.parse_args()

    import torch

    from seggpt_core import load_model
    from seggpt_core.research.evaluation import evaluate_prompt_tuning

    torch.manual_seed(0)
    started = time.perf_counter()
    reports = evaluate_prompt_tuning(load_model(args.weights, device="cpu"), args.projects, args.examples, args.targets,
                                     args.steps, args.k, args.jitter, log=lambda line: print(line, flush=True), lr=args.lr)
    print(f"weights={args.weights} projects={args.projects} examples={args.examples} targets={args.targets} steps={args.steps} "
          f"jitter={args.jitter:g}; {time.perf_counter() - started:.0f} s on {torch.get_num_threads()} thread(s)")
    for name, report in reports.items():
        print(f"{name:9s} mIoU={report.miou:.4f}")
    tuned, one = reports["tuned"].miou, reports["one-shot"].miou
    print(f"tuned_minus_one_shot={tuned - one:.4f} ratio={tuned / one:.3f}")


if __name__ == "__main__":
    main()

"""Does a tuned prompt beat one-shot? Measured side by side on held-out targets of synthetic projects.

A project is a fixed set of 3 or 4 appearance classes; its scenes each show the label's class beside others, with
instances that vary (jitter `--jitter`). For each of `--projects` projects: `--examples` labeled scenes (the
project's labeled tasks) and `--targets` held-out scenes. Baselines: one-shot from the first example (where
tuning starts) and the K-shot feature ensemble of the first K examples. Then the prompt is tuned on all
examples, SegGPT frozen. Prints mIoU per method and project; the last line is
`tuned_minus_one_shot=<difference> ratio=<tuned mIoU / one-shot mIoU>`.

    python bench/prompt_tuning.py [--weights tiny-appearance] [--projects 5] [--examples 16] [--targets 40] [--steps 150]
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
    parser.add_argument("--jitter", type=float, default=16.0)
    args = parser.parse_args()

    import torch

    from seggpt_core import Prompt, SegGptPredictor, load_model
    from seggpt_core.prompt_tuning import TuneSettings, tune_prompt
    from seggpt_core.research.appearance import make_project
    from seggpt_core.research.evaluation import HELD_OUT_SEED, EvalReport, iou

    torch.manual_seed(0)
    model = load_model(args.weights, device="cpu")
    predictor = SegGptPredictor(model)
    reports = {name: EvalReport() for name in ("one-shot", f"{args.k}-shot", "tuned")}
    seconds = 0.0
    for index in range(args.projects):
        label, scenes = make_project(HELD_OUT_SEED + 1_200_000 + 1000 * index, args.examples + args.targets, jitter=args.jitter)
        examples = [Prompt(s.image, {label: s.masks[label]}) for s in scenes[: args.examples]]
        targets = scenes[args.examples :]
        started = time.perf_counter()
        learned = tune_prompt(model, examples, TuneSettings(steps=args.steps))
        seconds += time.perf_counter() - started
        setups = {"one-shot": (examples[:1], None), f"{args.k}-shot": (examples[: args.k], None), "tuned": ([], learned)}
        name_of_project = f"project {index} ({label})"
        for name, (prompts, tuned) in setups.items():
            predictor.set_prompts(prompts, learned=tuned)
            for target, result in zip(targets, predictor.predict([t.image for t in targets])):
                reports[name].add(name_of_project, iou(result.masks[label], target.masks[label]))
        print(f"{name_of_project:26s} " + "  ".join(f"{name} {report.class_means[name_of_project]:.4f}" for name, report in reports.items()), flush=True)
    print(f"weights={args.weights} projects={args.projects} examples={args.examples} targets={args.targets} steps={args.steps} "
          f"jitter={args.jitter:g}; tuning {seconds / args.projects:.1f} s per project on {torch.get_num_threads()} thread(s)")
    for name, report in reports.items():
        print(f"{name:9s} mIoU={report.miou:.4f}")
    tuned, one = reports["tuned"].miou, reports["one-shot"].miou
    print(f"tuned_minus_one_shot={tuned - one:.4f} ratio={tuned / one:.3f}")


if __name__ == "__main__":
    main()

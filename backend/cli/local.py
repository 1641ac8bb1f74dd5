"""Commands on local folders and the model itself: demo, segment, eval, train-tiny."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
from PIL import Image

from seggpt_core.errors import WeightsError
from seggpt_core.research.tasks import TASKS
from seggpt_core.weights_digest import weights_digest
from worker.payloads import PredictionOptions
from worker.settings import DEFAULT_WEIGHTS, ModelSettings, WorkerSettings

from ..folder_mode import FORMATS, IMAGE_SUFFIXES, PromptSpec, load_prompts, parse_prompt_spec, prompts_from_dir, run_in_process, run_on_queue, write_outputs
from ..settings import Settings
from .common import add_model_options, command_settings, connect, local_workers_if_none

SAMPLES = Path(__file__).resolve().parent.parent / "samples"
# The project's own small SegGPT, trained on synthetic appearance episodes (`seggpt-ls train-tiny`), shipped in
# seggpt_core.
DEMO_WEIGHTS = "tiny-appearance"


def _score(args: argparse.Namespace) -> str:
    """`--score`, else SEGGPT_SCORE, else crisp."""
    return Settings.from_env(only=("score",), score=args.score).score


def _build_predictor(args: argparse.Namespace, model_settings: ModelSettings, score: str):
    # torch: `serve` runs from this CLI, and the web process never imports it (see backend/__init__.py)
    import torch

    from seggpt_core import SegGptPredictor, load_model

    dtype = getattr(torch, model_settings.dtype) if model_settings.dtype else None
    started = time.perf_counter()
    model = load_model(model_settings.weights, device=model_settings.device, dtype=dtype)
    param = next(model.parameters())
    print(f"model: {model_settings.weights} on {param.device} ({str(param.dtype).replace('torch.', '')}), loaded in {time.perf_counter() - started:.1f} s")
    return SegGptPredictor(model, embedding_type=args.embedding_type, spatial_ensemble=args.spatial_ensemble,
                           max_batch_rows=model_settings.max_batch_rows, labels_per_forward=args.labels_per_forward or None,
                           score=score)


def _list_images(directory: Path) -> list[Path]:
    if not directory.is_dir():
        raise SystemExit(f"--images {directory}: not a directory")
    return sorted(p for p in directory.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def _digest_if_local(weights: str) -> str | None:
    """The digest the jobs of this run expect, so that only workers with these weights run them; None (any
    worker) when the weights are not on this machine yet (a hub id the worker will download)."""
    try:
        return weights_digest(weights)
    except WeightsError:
        return None


def _run_segment(args: argparse.Namespace, settings: WorkerSettings, specs, images: list[Path], out: Path, preview: bool,
                 formats: list[str], truth: Path | None = None) -> int:
    prompts = load_prompts(specs)
    labels = list(dict.fromkeys(label for masks in prompts.values() for label in masks))
    score = _score(args)
    started = time.perf_counter()
    if args.no_queue:
        report = run_in_process(_build_predictor(args, settings.model, score), prompts, images, images_per_step=settings.model.max_batch_rows)
        where = "in this process"
    else:
        connection = connect(settings)
        digest = _digest_if_local(settings.model.weights)
        workers = local_workers_if_none(connection, settings, _model_flags(settings.model), digest)
        options = PredictionOptions(embedding_type=args.embedding_type, spatial_ensemble=bool(args.spatial_ensemble),
                                    labels_per_forward=args.labels_per_forward or 0, score=score)
        try:
            report = run_on_queue(connection, prompts, images, options, weights_digest=digest)
        finally:
            for process in workers:
                process.wait()
        where = "through the queue"
    elapsed = time.perf_counter() - started
    outputs = write_outputs(report, labels, prompts, out, formats, preview, args.image_prefix)
    print(f"labels: {', '.join(labels)}")
    print(f"segmented {len(report.results)} image(s) {where} in {elapsed:.1f} s; failed {len(report.failed)}")
    for path, reason in report.failed.items():
        print(f"  failed {path}: {reason}")
    print(f"wrote {len(outputs)} file(s) under {out}" + (f"; preview: {out / 'preview.png'}" if preview else ""))
    if truth is not None:
        _print_truth_iou(report, labels, truth)
    return 1 if report.failed else 0


def _print_truth_iou(report, labels: list[str], truth: Path) -> None:
    """IoU of every mask against `truth/<image stem>_<label>.png` (the bundled images come with their truth)."""
    from seggpt_core.research.evaluation import EvalReport, iou  # torch: see _build_predictor

    scores = EvalReport()
    for result in report.results:
        for label in labels:
            path = truth / f"{result.path.stem}_{label}.png"
            if path.is_file():
                with Image.open(path) as mask:
                    scores.add(label, iou(result.masks[label], np.asarray(mask.convert("L")) > 127))
    if scores.per_class:
        print("IoU against the generator's ground truth: " + ", ".join(f"{c} {v:.3f}" for c, v in scores.class_means.items())
              + f"; mIoU {scores.miou:.3f}")


def _model_flags(model: ModelSettings) -> list[str]:
    """The flags that give a local worker this command's model."""
    flags = ["--weights", model.weights, "--dtype", model.dtype or "auto", "--batch-rows", str(model.max_batch_rows)]
    return flags + (["--device", model.device] if model.device else [])


def cmd_segment(args: argparse.Namespace) -> int:
    try:
        specs = [parse_prompt_spec(text) for text in args.prompt or []]
        if args.prompts_dir:
            specs += prompts_from_dir(Path(args.prompts_dir))
    except ValueError as exc:
        raise SystemExit(str(exc)) from None
    if not specs:
        raise SystemExit("give at least one --prompt IMAGE:MASK[:LABEL] or a --prompts-dir")
    formats = [f.strip() for f in args.format.split(",") if f.strip()]
    unknown = [f for f in formats if f not in FORMATS]
    if unknown:
        raise SystemExit(f"--format {','.join(unknown)}: choose from {', '.join(FORMATS)}")
    images = _list_images(Path(args.images))
    if not images:
        raise SystemExit(f"--images {args.images}: no images found")
    return _run_segment(args, command_settings(args), specs, images, Path(args.out), args.preview, formats)


def demo_labels() -> list[str]:
    """The bundled prompt's labels, from its mask files (`prompt_<label>.png`)."""
    return sorted(path.stem[len("prompt_"):] for path in SAMPLES.glob("prompt_*.png"))


def cmd_demo(args: argparse.Namespace) -> int:
    prompt = SAMPLES / "prompt.png"
    labels = demo_labels()
    specs = [PromptSpec(prompt, SAMPLES / f"prompt_{label}.png", label) for label in labels]
    images = sorted(SAMPLES.glob("target_*.png"))
    settings = command_settings(args)
    weights = settings.model.weights
    print(f"demo: {len(images)} bundled synthetic images, prompted by {prompt.name} (labels {', '.join(labels)}: two of "
          "four look-alike classes of blobs, told apart only by color and texture)")
    if weights == DEMO_WEIGHTS:
        print(f"weights: {DEMO_WEIGHTS}, the project's own small SegGPT trained on synthetic appearance episodes (not "
              f"the real SegGPT: pass --weights {DEFAULT_WEIGHTS} for that), each label painted in its own forward")
    elif weights.startswith("random:"):
        print(
            f"note: {weights} is an untrained, seeded random network. The run exercises the whole path "
            "(embedded Redis, a worker process, preprocessing, canvas, ensemble, decoding, masks, preview), but "
            f"its masks carry no meaning. Pass --weights {DEFAULT_WEIGHTS} (or a local copy) for real segmentations."
        )
    return _run_segment(args, settings, specs, images, Path(args.out), True, ["png", "ls-json", "coco"], truth=SAMPLES / "truth")


def cmd_eval(args: argparse.Namespace) -> int:
    from seggpt_core.research.evaluation import evaluate_folder, evaluate_synthetic  # torch: see _build_predictor

    if bool(args.dataset) == bool(args.synthetic):
        raise SystemExit("give exactly one of --synthetic or --dataset DIR")
    model_settings = ModelSettings.from_env(weights=args.weights, device=args.device, dtype=args.dtype, max_batch_rows=args.batch_rows)
    predictor = _build_predictor(args, model_settings, _score(args))
    started = time.perf_counter()
    if args.synthetic:
        try:
            report = evaluate_synthetic(predictor, args.episodes, shots=args.shots, labels=args.labels, prompt_swap=args.prompt_swap,
                                        task=args.task, family=args.family, jitter=args.jitter)
        except ValueError as exc:
            raise SystemExit(str(exc)) from None
        family = f", {args.family} family, jitter {args.jitter:g}" if args.task == "appearance" else ""
        source = f"{args.episodes} held-out {args.task} episodes{family}, {args.labels} label(s)"
    else:
        try:
            report = evaluate_folder(predictor, Path(args.dataset), shots=args.shots)
        except ValueError as exc:
            raise SystemExit(str(exc)) from None
        source = f"dataset {args.dataset}"
    print(f"{source}, {args.shots}-shot, weights {model_settings.weights}, {predictor.labels_per_forward or 'all'} label(s) per forward, "
          f"{time.perf_counter() - started:.1f} s")
    for category, value in report.class_means.items():
        print(f"  {category}: IoU {value:.4f} over {len(report.per_class[category])} target(s)")
    print(f"prediction score vs IoU: Spearman {report.score_iou_spearman:.3f} over {len(report.scored)} mask(s)")
    if report.swaps:
        print(f"prompt of another class: mIoU {report.swapped_miou:.4f} (ratio {report.swap_ratio:.3f} of the own prompt's; "
              "near 1 means the model segments without reading its prompt)")
    print(f"mIoU={report.miou:.4f}")
    return 0


def cmd_train_tiny(args: argparse.Namespace) -> int:
    import torch  # torch: see _build_predictor

    from seggpt_core.research.training import TrainSettings, train

    if args.threads:
        torch.set_num_threads(args.threads)
    settings = TrainSettings(steps=args.steps, batch=args.batch, lr=args.lr, seed=args.seed, eval_every=args.eval_every,
                             eval_episodes=args.eval_episodes, warmup=args.warmup, task=args.task, init=args.init,
                             ensemble_shots=args.ensemble_shots, ensemble_batch=args.ensemble_batch)
    best = train(settings, Path(args.out), log=lambda line: print(line, flush=True))
    print(f"best held-out 1-shot mIoU {best['miou']:.4f} (another class's prompt: {best['swapped_miou']:.4f}) at step "
          f"{best['step']} ({best['seconds']} s); weights in {args.out}")
    return 0


def _add_queue_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--no-queue", action="store_true", help="run in this process instead of through Redis and workers")
    parser.add_argument("--redis-url", default=None, help="default: REDIS_URL, else the embedded Redis")


def add_demo(commands: argparse._SubParsersAction) -> None:
    demo = commands.add_parser("demo", help="segment the bundled sample images on embedded defaults")
    demo.add_argument("--out", default="seggpt-demo-out", help="output directory (default: %(default)s)")
    add_model_options(demo, DEMO_WEIGHTS)
    _add_queue_options(demo)
    demo.set_defaults(handler=cmd_demo, image_prefix=None)


def add_segment(commands: argparse._SubParsersAction) -> None:
    segment = commands.add_parser("segment", help="segment a folder of images from annotated prompt images")
    segment.add_argument("--prompt", action="append", metavar="IMAGE:MASK[:LABEL]", help="a prompt image and a mask of one label; repeat for more labels or images")
    segment.add_argument("--prompts-dir", help="folder of prompt images with masks named <image>__<label>.png")
    segment.add_argument("--images", required=True, help="folder of images to segment")
    segment.add_argument("--out", required=True, help="output directory")
    segment.add_argument("--format", default="png", help="comma-separated: png, ls-json, coco (default: %(default)s)")
    segment.add_argument("--preview", action="store_true", help="write preview.png, an overlay grid")
    segment.add_argument("--image-prefix", default=None, help="prefix for image references in label-studio.json (default: /data/local-files/?d=<path>)")
    add_model_options(segment)
    _add_queue_options(segment)
    segment.set_defaults(handler=cmd_segment)


def add_train_tiny(commands: argparse._SubParsersAction) -> None:
    trainer = commands.add_parser("train-tiny", help="train the small SegGPT on synthetic in-context episodes (2 CPU cores, < 2 h)")
    trainer.add_argument("--out", required=True, help="directory for config.json + model.safetensors (best checkpoint)")
    trainer.add_argument("--task", choices=TASKS, default="appearance", help="appearance classes with paired labels (the shipped recipe) or shape categories (default: %(default)s)")
    trainer.add_argument("--steps", type=int, default=3600)
    trainer.add_argument("--batch", type=int, default=16, help="image pairs per step (appearance: two rows each)")
    trainer.add_argument("--lr", type=float, default=1e-3)
    trainer.add_argument("--seed", type=int, default=0)
    trainer.add_argument("--eval-every", type=int, default=500)
    trainer.add_argument("--eval-episodes", type=int, default=60, help="held-out episodes scored (with the prompt swap) at each checkpoint")
    trainer.add_argument("--threads", type=int, default=0, help="torch threads (default: torch's choice)")
    trainer.add_argument("--warmup", type=int, default=200, help="steps of linear learning-rate warm-up before the cosine decay")
    trainer.add_argument("--init", help="start from these weights (e.g. tiny-appearance) instead of random ones: fine-tuning")
    trainer.add_argument("--ensemble-shots", type=int, default=0, help="also train K-prompt episodes through the feature ensemble, with instances that vary more (0: one-shot only)")
    trainer.add_argument("--ensemble-batch", type=int, default=4, help="image pairs of K prompts each per step, with --ensemble-shots")
    trainer.set_defaults(handler=cmd_train_tiny)


def add_eval(commands: argparse._SubParsersAction) -> None:
    evaluate = commands.add_parser("eval", help="mIoU on held-out synthetic episodes or an FSS-1000 style folder")
    evaluate.add_argument("--synthetic", action="store_true", help="generated episodes (seeds never used in training)")
    evaluate.add_argument("--task", choices=TASKS, default="appearance", help="synthetic episodes of appearance classes or of shape categories (default: %(default)s)")
    evaluate.add_argument("--family", choices=("train", "heldout"), default="train",
                          help="appearance episodes drawn like training ones (other seeds) or from the held-out family of unseen textures, shapes and backgrounds")
    evaluate.add_argument("--jitter", type=float, default=8.0, help="appearance: the instances' brightness spread (raise it for instances that vary)")
    evaluate.add_argument("--episodes", type=int, default=200)
    evaluate.add_argument("--labels", type=int, default=1, help="labels per synthetic episode")
    evaluate.add_argument("--prompt-swap", action="store_true", help="also segment each synthetic target with another class's prompt (does the model read its prompt?)")
    evaluate.add_argument("--dataset", help="folder with one subfolder per class of name.jpg + name.png pairs")
    evaluate.add_argument("--shots", type=int, default=1, help="K prompts per episode (feature ensemble)")
    add_model_options(evaluate)
    evaluate.set_defaults(handler=cmd_eval)

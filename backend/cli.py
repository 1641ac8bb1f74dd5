"""The `seggpt-ls` command line. Heavy imports (torch) happen inside the commands that need them."""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from pathlib import Path
from typing import Sequence

__all__ = ["main"]

SAMPLES = Path(__file__).parent / "samples"
# The project's own small SegGPT, trained on synthetic appearance episodes (`seggpt-ls train-tiny`), shipped in
# seggpt_core.
DEMO_WEIGHTS = "tiny-appearance"


def _add_model_options(parser: argparse.ArgumentParser, default_weights: str) -> None:
    parser.add_argument("--weights", default=default_weights, help="hub id, directory, .safetensors, original .pth, or random:<variant> (default: %(default)s)")
    parser.add_argument("--device", default=os.environ.get("SEGGPT_DEVICE"), help="cuda:0, cpu, ... (default: CUDA if available)")
    parser.add_argument("--dtype", default=os.environ.get("SEGGPT_DTYPE", "auto"), choices=["auto", "float32", "bfloat16", "float16"])
    parser.add_argument("--embedding-type", default="instance", choices=["instance", "semantic"])
    parser.add_argument("--spatial-ensemble", action="store_true", help="stitch prompts into one canvas instead of the feature ensemble")
    parser.add_argument("--batch-size", type=int, default=8, help="prompt rows per forward (targets x prompts)")
    parser.add_argument("--labels-per-forward", type=int, default=0,
                        help="paint at most N labels per forward (0: the model's own limit: 1 for tiny-appearance, trained on one color; none for SegGPT)")


def _build_predictor(args: argparse.Namespace):
    import torch

    from seggpt_core import SegGptPredictor, load_model

    dtype = None if args.dtype == "auto" else getattr(torch, args.dtype)
    started = time.perf_counter()
    model = load_model(args.weights, device=args.device, dtype=dtype)
    param = next(model.parameters())
    print(f"model: {args.weights} on {param.device} ({str(param.dtype).replace('torch.', '')}), loaded in {time.perf_counter() - started:.1f} s")
    return SegGptPredictor(model, embedding_type=args.embedding_type, spatial_ensemble=args.spatial_ensemble,
                           max_batch_rows=args.batch_size, labels_per_forward=args.labels_per_forward or None)


def _list_images(directory: Path) -> list[Path]:
    from .folder_mode import IMAGE_SUFFIXES

    if not directory.is_dir():
        raise SystemExit(f"--images {directory}: not a directory")
    return sorted(p for p in directory.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def _run_segment(args: argparse.Namespace, specs, images: list[Path], out: Path, preview: bool, formats: list[str], truth: Path | None = None) -> int:
    from .folder_mode import load_prompts, run_in_process, run_on_queue, write_outputs

    prompts = load_prompts(specs)
    labels = list(dict.fromkeys(label for masks in prompts.values() for label in masks))
    started = time.perf_counter()
    if args.no_queue:
        report = run_in_process(_build_predictor(args), prompts, images, batch_size=args.batch_size)
        where = "in this process"
    else:
        connection = _connection(args)
        workers = _local_workers_if_none(connection, args, _model_flags(args))
        options = {"embedding_type": args.embedding_type, "spatial_ensemble": args.spatial_ensemble, "labels_per_forward": args.labels_per_forward}
        try:
            report = run_on_queue(connection, prompts, images, options)
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
    import numpy as np
    from PIL import Image

    from seggpt_core.research.evaluation import EvalReport, iou

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


def _model_flags(args: argparse.Namespace) -> list[str]:
    flags = ["--weights", args.weights, "--dtype", args.dtype, "--batch-size", str(args.batch_size)]
    return flags + (["--device", args.device] if args.device else [])


def cmd_segment(args: argparse.Namespace) -> int:
    from .folder_mode import FORMATS, parse_prompt_spec, prompts_from_dir

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
    return _run_segment(args, specs, images, Path(args.out), args.preview, formats)


def demo_labels() -> list[str]:
    """The bundled prompt's labels, from its mask files (`prompt_<label>.png`)."""
    return sorted(path.stem[len("prompt_"):] for path in SAMPLES.glob("prompt_*.png"))


def cmd_demo(args: argparse.Namespace) -> int:
    from .folder_mode import PromptSpec

    prompt = SAMPLES / "prompt.png"
    labels = demo_labels()
    specs = [PromptSpec(prompt, SAMPLES / f"prompt_{label}.png", label) for label in labels]
    images = sorted(SAMPLES.glob("target_*.png"))
    print(f"demo: {len(images)} bundled synthetic images, prompted by {prompt.name} (labels {', '.join(labels)}: two of "
          "four look-alike classes of blobs, told apart only by color and texture)")
    if args.weights == DEMO_WEIGHTS:
        print(f"weights: {DEMO_WEIGHTS}, the project's own small SegGPT trained on synthetic appearance episodes (not "
              "the real SegGPT: pass --weights BAAI/seggpt-vit-large for that), each label painted in its own forward")
    elif args.weights.startswith("random:"):
        print(
            f"note: {args.weights} is an untrained, seeded random network. The run exercises the whole path "
            "(embedded Redis, a worker process, preprocessing, canvas, ensemble, decoding, masks, preview), but "
            "its masks carry no meaning. Pass --weights BAAI/seggpt-vit-large (or a local copy) for real segmentations."
        )
    return _run_segment(args, specs, images, Path(args.out), True, ["png", "ls-json", "coco"], truth=SAMPLES / "truth")


def cmd_eval(args: argparse.Namespace) -> int:
    from seggpt_core.research.evaluation import evaluate_folder, evaluate_synthetic

    if bool(args.dataset) == bool(args.synthetic):
        raise SystemExit("give exactly one of --synthetic or --dataset DIR")
    predictor = _build_predictor(args)
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
    print(f"{source}, {args.shots}-shot, weights {args.weights}, {predictor.labels_per_forward or 'all'} label(s) per forward, "
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
    import torch

    from seggpt_core.research.training import TrainSettings, train

    if args.threads:
        torch.set_num_threads(args.threads)
    settings = TrainSettings(steps=args.steps, batch=args.batch, lr=args.lr, seed=args.seed, eval_every=args.eval_every,
                             eval_episodes=args.eval_episodes, warmup=args.warmup, task=args.task, init=args.init)
    best = train(settings, Path(args.out), log=lambda line: print(line, flush=True))
    print(f"best held-out 1-shot mIoU {best['miou']:.4f} (another class's prompt: {best['swapped_miou']:.4f}) at step "
          f"{best['step']} ({best['seconds']} s); weights in {args.out}")
    return 0


def _connection(args: argparse.Namespace):
    from worker import get_connection

    return get_connection(args.redis_url)


def cmd_worker(args: argparse.Namespace) -> int:
    from worker.gpu_worker import run_worker
    from worker.runtime import ModelSettings

    from .settings import Settings
    from .worker_plugin import install

    install()  # the Label Studio image source and result sink, by name
    backend_settings = Settings.from_env()

    settings = ModelSettings(
        weights=args.weights,
        device=args.device,
        dtype=None if args.dtype == "auto" else args.dtype,
        max_batch_rows=args.batch_size,
        low_memory=args.low_memory,
    )
    run_worker(
        _connection(args),
        args.queue or [backend_settings.interactive_queue, backend_settings.queue],  # interactive work first
        settings,
        burst=args.burst,
        heartbeat_interval=args.heartbeat_interval,
        maintenance_interval=args.maintenance_interval,
    )
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    import json

    from worker import queue_status

    if args.project is not None:
        from .bootstrap import load_batch

        connection = _connection(args)
        batch = load_batch(connection, args.project)
        if batch is None:
            print(f"project {args.project}: no bootstrap has run")
            return 0
        return _print_batch(connection, batch)
    status = queue_status(_connection(args), args.queue)
    if args.json:
        print(json.dumps(status, indent=2))
        return 0
    for name, counts in status["queues"].items():
        print(f"queue {name}: {counts['queued']} queued, {counts['running']} running, {counts['failed']} failed")
    for job in status["running"]:
        print(f"  running {job['id']} ({job['description']}): {job['done']}/{job['total']} done, {job['failed']} failed")
    for job in status["failed"]:
        print(f"  failed  {job['id']}: {job['done']}/{job['total']} done; {job.get('reason', '')}")
    print(f"workers: {len(status['workers'])}")
    for worker in status["workers"]:
        print(f"  {worker['name']} on {worker['host']}: {worker['state']}, device {worker['device']}, weights {worker['weights']}, queues {','.join(worker['queues'])}")
    return 0


def _print_batch(connection, batch) -> int:
    from .bootstrap import batch_failures, batch_progress

    progress = batch_progress(connection, batch)
    failures = batch_failures(connection, batch)
    ended = progress["jobs_finished"] + progress["jobs_failed"] == progress["jobs"]
    state = "finished" if ended else "running"
    print(f"project {batch.project}, model version {batch.model_version}: {state}")
    print(f"  done {progress['done']}, failed {len(failures)}, queued {batch.queued}, skipped {batch.skipped} "
          f"(already predicted {batch.skipped_predicted}, in flight {batch.skipped_inflight}, no image {batch.skipped_no_image})")
    for task_id, reason in sorted(failures.items()):
        print(f"  task {task_id}: {reason}")
    return 1 if failures else 0


def _wait_with_progress(connection, batch) -> None:
    from tqdm import tqdm

    from .bootstrap import batch_progress

    with tqdm(total=batch.queued, unit="task", desc="pre-labeling", dynamic_ncols=True) as bar:
        while True:
            progress = batch_progress(connection, batch)
            bar.update(progress["done"] + progress["failed"] - bar.n)
            bar.set_postfix(done=progress["done"], failed=progress["failed"])
            if progress["jobs_finished"] + progress["jobs_failed"] == progress["jobs"]:
                return
            time.sleep(0.5)


def _local_workers_if_none(connection, args, flags: Sequence[str] = ()) -> list:
    """With the embedded Redis and no live worker, run one for this command (it quits when the queue is empty)."""
    import subprocess

    from worker import queue_status

    if args.redis_url or queue_status(connection)["workers"]:
        return []
    print("no live worker: starting one on this machine for this run")
    return [subprocess.Popen([sys.executable, "-m", "backend.cli", "--log-level", "WARNING", "worker", "--burst", *flags])]


def cmd_bootstrap(args: argparse.Namespace) -> int:
    from .bootstrap import BootstrapError, start_bootstrap
    from .services import build_services
    from .settings import Settings

    settings = Settings.from_env(label_studio_url=args.label_studio_url, label_studio_api_key=args.api_key)
    services = build_services(settings)
    connection = _connection(args)
    try:
        batch = start_bootstrap(connection, services, args.project, only=args.only, limit=args.limit, chunk_size=args.chunk_size)
    except BootstrapError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"model version {batch.model_version}: queued {batch.queued} task(s) in {len(batch.job_ids)} job(s), "
          f"skipped {batch.skipped} (already predicted {batch.skipped_predicted}, in flight {batch.skipped_inflight})")
    if args.no_wait:
        print(f"follow it with: seggpt-ls status --project {args.project}")
        return 0
    workers = _local_workers_if_none(connection, args) if batch.job_ids else []
    try:
        if batch.job_ids:
            _wait_with_progress(connection, batch)
    finally:
        for process in workers:
            process.wait()
    return _print_batch(connection, batch)


def cmd_train_prompt(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from .bootstrap import project_controls
    from .prompt_pool import PromptPool
    from .prompt_training import enqueue_prompt_tuning
    from .services import build_services
    from .settings import Settings

    settings = Settings.from_env(label_studio_url=args.label_studio_url, label_studio_api_key=args.api_key, tune_steps=args.steps)
    for variable, value in (("LABEL_STUDIO_URL", settings.label_studio_url), ("LABEL_STUDIO_API_KEY", settings.label_studio_api_key)):
        if value:
            os.environ[variable] = value  # a local worker started below reads them from its environment
    connection = _connection(args)
    pool = PromptPool(connection, args.project)
    if args.clear:
        from .predict_service import model_version

        pool.clear_learned_prompts()
        print(f"project {args.project}: learned prompts dropped; model version {model_version(settings, pool.version())} "
              "predicts from the annotations again")
        return 0
    project_controls(build_services(settings), pool)  # the job reads the saved config
    job = enqueue_prompt_tuning(connection, settings, args.project)
    print(f"queued prompt tuning of project {args.project} ({settings.tune_steps} steps per image field) as job {job.id}")
    if args.no_wait:
        print("follow it with: seggpt-ls status")
        return 0
    workers = _local_workers_if_none(connection, args)
    try:
        with tqdm(total=None, unit="step", desc="prompt tuning", dynamic_ncols=True) as bar:
            while True:
                job.refresh()
                meta = job.get_meta()
                if meta.get("total") and bar.total != meta["total"]:
                    bar.total = meta["total"]
                bar.update(int(meta.get("done") or 0) - bar.n)
                if "loss" in meta:
                    bar.set_postfix(loss=meta["loss"])
                if job.get_status() in ("finished", "failed", "canceled", "stopped"):
                    break
                time.sleep(0.5)
    finally:
        for process in workers:
            process.wait()
    if job.get_status() != "finished":
        result = job.latest_result()
        reason = (result.exc_string or "").strip().splitlines()[-1:] if result is not None else []
        print(f"error: prompt tuning {job.get_status()}: {reason[0] if reason else 'see the worker log'}", file=sys.stderr)
        return 1
    from .predict_service import model_version

    outcome = job.return_value()
    for data_key, field in outcome["fields"].items():
        print(f"${data_key}: {field['examples']} labeled task(s), labels {', '.join(field['labels'])}, "
              f"final loss {field['final_loss']}, saved to {field['path']}")
    print(f"model version {model_version(settings, outcome['pool_version'])}: /predict and bootstrap use the tuned prompt from now on")
    return 0


def cmd_retry_failed(args: argparse.Namespace) -> int:
    from worker import retry_failed
    from worker.defaults import DEFAULT_QUEUE

    total = 0
    for name in args.queue or [DEFAULT_QUEUE]:
        ids = retry_failed(_connection(args), name)
        total += len(ids)
        for job_id in ids:
            print(f"re-queued {job_id} on {name}")
    print(f"re-queued {total} failed job(s)")
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    import signal
    import subprocess

    import uvicorn

    from .app import create_app
    from .settings import ENVIRONMENT, Settings

    overrides = {name: getattr(args, name, None) for name in ENVIRONMENT}
    settings = Settings.from_env(**{k: v for k, v in overrides.items() if v not in (None, "")})
    if settings.model_dir:
        os.environ["MODEL_DIR"] = settings.model_dir  # the embedded Redis lives there, for us and the workers
    workers = []
    if not settings.redis_url and args.workers > 0:
        # Local workers share the embedded Redis: same environment, same settings.
        env = dict(os.environ)
        for name, (variable, _) in ENVIRONMENT.items():
            value = getattr(settings, name)
            if value not in (None, "", ()):
                env[variable] = ",".join(value) if isinstance(value, tuple) else str(value)
        for _ in range(args.workers):
            workers.append(subprocess.Popen([sys.executable, "-m", "backend.cli", "--log-level", args.log_level, "worker"], env=env))
    try:
        uvicorn.run(create_app(settings), host=args.host, port=args.port, log_level=args.log_level.lower())
    finally:
        for process in workers:
            process.send_signal(signal.SIGTERM)
        for process in workers:
            try:
                process.wait(30)
            except subprocess.TimeoutExpired:
                process.kill()
    return 0


def _add_queue_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--no-queue", action="store_true", help="run in this process instead of through Redis and workers")
    parser.add_argument("--redis-url", default=os.environ.get("REDIS_URL"), help="default: REDIS_URL, else the embedded Redis")


def _add_redis_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--redis-url", default=os.environ.get("REDIS_URL"), help="default: REDIS_URL, else the embedded Redis under MODEL_DIR")
    parser.add_argument("--queue", action="append", help="queue name (repeatable; default: seggpt)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="seggpt-ls", description="Few-shot pre-labeling for Label Studio with SegGPT.")
    parser.add_argument("--log-level", default=os.environ.get("LOG_LEVEL", "INFO"))
    commands = parser.add_subparsers(dest="command", required=True)

    demo = commands.add_parser("demo", help="segment the bundled sample images on embedded defaults")
    demo.add_argument("--out", default="seggpt-demo-out", help="output directory (default: %(default)s)")
    _add_model_options(demo, DEMO_WEIGHTS)
    _add_queue_options(demo)
    demo.set_defaults(handler=cmd_demo, image_prefix=None)

    segment = commands.add_parser("segment", help="segment a folder of images from annotated prompt images")
    segment.add_argument("--prompt", action="append", metavar="IMAGE:MASK[:LABEL]", help="a prompt image and a mask of one label; repeat for more labels or images")
    segment.add_argument("--prompts-dir", help="folder of prompt images with masks named <image>__<label>.png")
    segment.add_argument("--images", required=True, help="folder of images to segment")
    segment.add_argument("--out", required=True, help="output directory")
    segment.add_argument("--format", default="png", help="comma-separated: png, ls-json, coco (default: %(default)s)")
    segment.add_argument("--preview", action="store_true", help="write preview.png, an overlay grid")
    segment.add_argument("--image-prefix", default=None, help="prefix for image references in label-studio.json (default: /data/local-files/?d=<path>)")
    _add_model_options(segment, os.environ.get("SEGGPT_WEIGHTS", "BAAI/seggpt-vit-large"))
    _add_queue_options(segment)
    segment.set_defaults(handler=cmd_segment)

    from worker.defaults import HEARTBEAT_INTERVAL, MAINTENANCE_INTERVAL

    worker = commands.add_parser("worker", help="run a worker: load the model once, then process queued jobs")
    _add_redis_option(worker)
    _add_model_options(worker, os.environ.get("SEGGPT_WEIGHTS", "BAAI/seggpt-vit-large"))
    worker.add_argument("--burst", action="store_true", help="quit when the queues are empty")
    from worker.runtime import ModelSettings

    worker.add_argument("--low-memory", action="store_true", default=ModelSettings.from_env().low_memory,
                        help="smaller activation blocks, freed memory given back to the OS at once: a lower peak on CPU workers, slower forwards (env SEGGPT_LOW_MEMORY)")
    worker.add_argument("--heartbeat-interval", type=int, default=HEARTBEAT_INTERVAL, help="seconds between heartbeats (default: %(default)s)")
    worker.add_argument("--maintenance-interval", type=int, default=MAINTENANCE_INTERVAL, help="seconds between sweeps for abandoned jobs (default: %(default)s)")
    worker.set_defaults(handler=cmd_worker)

    from seggpt_core.research.tasks import TASKS

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
    trainer.set_defaults(handler=cmd_train_tiny)

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
    _add_model_options(evaluate, os.environ.get("SEGGPT_WEIGHTS", "BAAI/seggpt-vit-large"))
    evaluate.set_defaults(handler=cmd_eval)

    from .settings import ENVIRONMENT

    serve = commands.add_parser("serve", help="run the Label Studio ML backend (and local workers with the embedded Redis)")
    serve.add_argument("--host", default="0.0.0.0")
    serve.add_argument("--port", type=int, default=9090)
    serve.add_argument("--workers", type=int, default=1, help="local worker processes with the embedded Redis (0: none)")
    for name, (variable, help_text) in ENVIRONMENT.items():
        if name == "log_level":
            continue
        serve.add_argument("--" + name.replace("_", "-"), dest=name, default=None, help=f"{help_text} [{variable}]")
    serve.set_defaults(handler=cmd_serve)

    status = commands.add_parser("status", help="queues, running and failed jobs, live workers")
    _add_redis_option(status)
    status.add_argument("--json", action="store_true")
    status.add_argument("--project", type=int, help="show the progress of the project's latest bootstrap")

    bootstrap = commands.add_parser("bootstrap", help="pre-label a whole project through the queue (resumable)")
    _add_redis_option(bootstrap)
    bootstrap.add_argument("--project", type=int, required=True)
    bootstrap.add_argument("--label-studio-url", default=None, help="default: LABEL_STUDIO_URL")
    bootstrap.add_argument("--api-key", default=None, help="default: LABEL_STUDIO_API_KEY (legacy token or personal access token)")
    bootstrap.add_argument("--only", choices=["unlabeled", "all"], default="unlabeled")
    bootstrap.add_argument("--limit", type=int, default=None, help="at most N tasks")
    bootstrap.add_argument("--chunk-size", type=int, default=None, help="tasks per job (default: SEGGPT_CHUNK_SIZE)")
    bootstrap.add_argument("--no-wait", action="store_true", help="queue and return; see progress with status --project")
    bootstrap.set_defaults(handler=cmd_bootstrap)
    status.set_defaults(handler=cmd_status)

    tune = commands.add_parser("train-prompt", help="learn a prompt for a project's labels from its labeled tasks (prompt tuning, as a job)")
    _add_redis_option(tune)
    tune.add_argument("--project", type=int, required=True)
    tune.add_argument("--label-studio-url", default=None, help="default: LABEL_STUDIO_URL")
    tune.add_argument("--api-key", default=None, help="default: LABEL_STUDIO_API_KEY (legacy token or personal access token)")
    tune.add_argument("--steps", type=int, default=None, help="optimisation steps per image field (default: SEGGPT_TUNE_STEPS)")
    tune.add_argument("--no-wait", action="store_true", help="queue and return; see progress with status")
    tune.add_argument("--clear", action="store_true", help="drop the project's learned prompts: predict from the annotations again")
    tune.set_defaults(handler=cmd_train_prompt)

    retry = commands.add_parser("retry-failed", help="re-queue failed jobs (tasks already done are skipped)")
    _add_redis_option(retry)
    retry.set_defaults(handler=cmd_retry_failed)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per request drowns what matters
    from seggpt_core.errors import SegGptError  # light: does not load torch

    try:
        return args.handler(args)
    except SegGptError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())

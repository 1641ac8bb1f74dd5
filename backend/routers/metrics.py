"""GET /metrics: Prometheus text format."""

from fastapi import APIRouter, Depends
from fastapi.responses import PlainTextResponse

from worker import queue_status

from ..dependencies import RedisDep, SettingsDep, require_basic_auth
from ..metrics import render
from ..review_report import review_metrics

router = APIRouter(dependencies=[Depends(require_basic_auth)])


@router.get("/metrics", response_class=PlainTextResponse)
def metrics(settings: SettingsDep, connection: RedisDep) -> str:
    status = queue_status(connection, [settings.queue, settings.interactive_queue, settings.control_queue])
    models = [w for w in status["workers"] if w["role"] != "control"]
    gauges = {"workers": len(models), "control_workers": len(status["workers"]) - len(models)}
    for name, counts in status["queues"].items():
        key = name.replace("-", "_")
        gauges[f"queue_{key}_queued"] = counts["queued"]
        gauges[f"queue_{key}_running"] = counts["running"]
        gauges[f"queue_{key}_failed"] = counts["failed"]
    # one series per live worker, and a count per weights digest: a worker with other weights shows before it bites
    info = {(w["name"], w["host"], str(w["device"]), w["weights_digest"] or "unknown", ",".join(w["queues"])): 1 for w in status["workers"]}
    by_digest: dict[tuple, float] = {}
    for worker in models:  # a control worker has no weights
        key = (worker["weights_digest"] or "unknown",)
        by_digest[key] = by_digest.get(key, 0) + 1
    return render(connection, gauges, {
        "worker_info": (["name", "host", "device", "weights_digest", "queues"], info),
        "workers_by_weights": (["weights_digest"], by_digest),
        **review_metrics(connection),
    })

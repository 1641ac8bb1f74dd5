"""--low-memory: glibc's mmap threshold pinned, so freed activations leave the process at once."""

from __future__ import annotations

import subprocess
import sys
import textwrap

from worker.runtime import ModelSettings

# Allocates and frees an 8 MB block three times and prints how many MB the last free handed back to the OS.
# Measured around the free itself: pages the heap already held before the probe would blur a from-the-start count.
_PROBE = textwrap.dedent(
    """
    import sys, numpy as np
    from worker.runtime import ModelSettings, WorkerRuntime
    WorkerRuntime(ModelSettings(weights="random:tiny", device="cpu", low_memory=sys.argv[1] == "low")).load()
    def rss():
        return int(open("/proc/self/statm").read().split()[1]) * 4096
    for _ in range(3):
        block = np.ones(8 << 20, np.uint8)
        held = rss()
        del block
    print((held - rss()) / 2**20)
    """
)


def _returned_mb(mode: str) -> float:
    out = subprocess.run([sys.executable, "-c", _PROBE, mode], capture_output=True, text=True, check=True)
    return float(out.stdout.strip())


def test_low_memory_worker_returns_freed_blocks_and_the_default_keeps_them():
    # By default glibc raises its threshold after the first free and keeps later 8 MB blocks in the heap (faster
    # reuse); a low-memory worker gives them back.
    assert _returned_mb("default") < 1
    assert _returned_mb("low") > 7


def test_low_memory_comes_from_the_environment_and_the_cli(monkeypatch):
    from backend.cli import build_parser
    from backend.cli.queue_commands import worker_settings

    def worker(*flags: str) -> bool:
        return worker_settings(build_parser().parse_args(["worker", *flags])).model.low_memory

    monkeypatch.delenv("SEGGPT_LOW_MEMORY", raising=False)
    assert ModelSettings.from_env().low_memory is False
    assert worker() is False
    assert worker("--low-memory") is True
    monkeypatch.setenv("SEGGPT_LOW_MEMORY", "true")
    assert ModelSettings.from_env().low_memory is True
    assert worker() is True


# Frees 200 heap blocks of 64 KB (under the mmap threshold) behind one that stays, so glibc cannot shrink the heap
# from its top; prints the resident MB kept before and after release_free_heap().
_TRIM_PROBE = textwrap.dedent(
    """
    import numpy as np
    from seggpt_core.host_memory import release_free_heap
    def rss():
        return int(open("/proc/self/statm").read().split()[1]) * 4096
    start = rss()
    blocks = [np.ones(64 << 10, np.uint8) for _ in range(200)]
    keep = np.ones(64 << 10, np.uint8)
    del blocks
    kept = (rss() - start) / 2**20
    assert release_free_heap()
    print(kept, (rss() - start) / 2**20)
    """
)


def test_releasing_the_free_heap_returns_pages_freed_inside_it():
    out = subprocess.run([sys.executable, "-c", _TRIM_PROBE], capture_output=True, text=True, check=True)
    before, after = (float(v) for v in out.stdout.split())
    assert before >= 10  # 12.5 MB freed but still resident
    assert after < before - 8


_BOUNDS_PROBE = textwrap.dedent(
    """
    import sys
    import seggpt_core.model as model
    from worker.runtime import ModelSettings, WorkerRuntime
    WorkerRuntime(ModelSettings(weights="random:tiny", device="cpu", low_memory=sys.argv[1] == "low")).load()
    print(model._BIAS_ELEMENTS_PER_CHUNK["cpu"], model._MLP_ELEMENTS_PER_CHUNK["cpu"])
    """
)


def test_a_low_memory_worker_uses_smaller_activation_blocks():
    def bounds(mode: str) -> list[int]:
        out = subprocess.run([sys.executable, "-c", _BOUNDS_PROBE, mode], capture_output=True, text=True, check=True)
        return [int(v) for v in out.stdout.split()]

    assert [v // 4 for v in bounds("default")] == bounds("low")

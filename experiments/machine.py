"""What a benchmark records about where it ran: rates move with the machine and its neighbours,
so every result file says which CPU/GPU, how many threads and how loaded the machine was."""

from __future__ import annotations

import os
import platform
import time

import torch

from hatcat.cpu_dtype import cpu_name


def machine(load_before: tuple[float, float, float]) -> dict[str, object]:
    """The machine, with the load average (1, 5, 15 min) before the run (`load_before`) and now."""
    return {
        "cpu": cpu_name(),
        "threads": torch.get_num_threads(),
        "platform": platform.platform(),
        "torch": torch.__version__,
        "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
        "load_average_before": [round(x, 2) for x in load_before],
        "load_average_after": [round(x, 2) for x in os.getloadavg()],
    }


def now() -> str:
    """UTC time stamp for `measured_at`."""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())

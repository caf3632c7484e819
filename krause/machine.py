"""What a benchmark ran on, for its printed header and JSON record."""

from __future__ import annotations

import datetime
import os
import platform
from pathlib import Path

import jax

from krause.allocator import allocator


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo (e.g. "Intel(R) Xeon(R) Processor"), else the
    platform's processor or machine string."""
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def describe() -> dict:
    """CPU count and model, JAX version and backend, allocator, Python, time, load average."""
    return dict(
        cpus=os.cpu_count(),
        cpu_model=cpu_model(),
        jax=jax.__version__,
        backend=jax.default_backend(),
        devices=[d.device_kind for d in jax.devices()],
        allocator=allocator(),
        python=platform.python_version(),
        date=datetime.datetime.now().isoformat(timespec="seconds"),
        load_average_before=[round(x, 2) for x in os.getloadavg()],
    )

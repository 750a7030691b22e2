"""Energy of a block of work, measured where the platform allows it, else estimated.

Energy is measured where the platform allows it: CPU packages through Linux RAPL
(``/sys/class/powercap/intel-rapl:N/energy_uj``, when readable) and NVIDIA GPUs through
NVML (when ``pynvml`` is installed). Otherwise it is estimated as device power times wall
time, with :data:`CPU_WATTS_PER_CORE` per CPU core available to the process and
:data:`GPU_WATTS` per visible GPU (override with the environment variables
``NATURELENS_CPU_WATTS_PER_CORE`` and ``NATURELENS_GPU_WATTS``). The estimate assumes
full load, so it is an upper bound for light methods; the energy of a remote API server
is never included. Each row says which applies.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# Default device power for the energy estimate. Server CPUs draw roughly 100-280 W (TDP)
# over 8-64 cores, about 5-15 W per core; data-centre GPUs 250-700 W (A100 PCIe 250-300 W).
CPU_WATTS_PER_CORE = 10.0
GPU_WATTS = 300.0
RAPL_ROOT = Path("/sys/class/powercap")


def _rapl_files() -> list[tuple[Path, int]]:
    """Readable RAPL package counters with their wrap-around range."""
    out = []
    for zone in sorted(RAPL_ROOT.glob("intel-rapl:*")):
        if zone.name.count(":") != 1:  # sub-zones (core, dram) are inside the package
            continue
        energy = zone / "energy_uj"
        try:
            int(energy.read_text())
            top = int((zone / "max_energy_range_uj").read_text())
        except (OSError, ValueError):
            continue
        out.append((energy, top))
    return out


def _nvml_handles() -> list[Any]:
    try:
        import pynvml  # optional
    except ImportError:
        return []
    try:
        pynvml.nvmlInit()
        handles = [pynvml.nvmlDeviceGetHandleByIndex(i) for i in range(pynvml.nvmlDeviceGetCount())]
        for h in handles:
            pynvml.nvmlDeviceGetTotalEnergyConsumption(h)
        return handles
    except Exception:  # noqa: BLE001 - no driver or an old GPU: fall back to the estimate
        return []


def _gpu_count() -> int:
    torch = sys.modules.get("torch")  # only ask torch if a method already loaded it
    try:
        return torch.cuda.device_count() if torch is not None and torch.cuda.is_available() else 0
    except Exception:  # noqa: BLE001
        return 0


def _cpu_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


@dataclass
class Energy:
    """Energy used while a block ran, in watt-hours, and how it was obtained."""

    wh: float = 0.0
    source: str = ""
    measured: bool = False


@contextmanager
def energy_meter() -> Iterator[Energy]:
    """Measure (or estimate) the energy of the enclosed block; fills the yielded record."""
    result = Energy()
    rapl = _rapl_files()
    nvml = _nvml_handles()
    before_cpu = [int(f.read_text()) for f, _ in rapl]
    before_gpu = _nvml_read(nvml)
    started = time.perf_counter()
    try:
        yield result
    finally:
        seconds = time.perf_counter() - started
        parts, measured = [], []
        joules = 0.0
        if rapl:
            for (f, top), b in zip(rapl, before_cpu, strict=True):
                delta = int(f.read_text()) - b
                joules += (delta if delta >= 0 else delta + top) / 1e6
            measured.append("CPU measured (RAPL)")
        else:
            watts = _cpu_watts()
            joules += watts * seconds
            parts.append(f"CPU estimated ({_cpu_cores()} cores x {watts / _cpu_cores():g} W)")
        if nvml:
            joules += sum(a - b for a, b in zip(_nvml_read(nvml), before_gpu, strict=True)) / 1e3
            measured.append("GPU measured (NVML)")
        elif gpus := _gpu_count():
            joules += gpus * _gpu_watts() * seconds
            parts.append(f"GPU estimated ({gpus} x {_gpu_watts():g} W)")
        result.wh = joules / 3600
        result.source = ", ".join(measured + parts)
        result.measured = not parts


def estimate_energy(seconds: float) -> Energy:
    """The power-times-time estimate for ``seconds`` of work on this machine."""
    watts = _cpu_watts() + _gpu_count() * _gpu_watts()
    source = f"CPU estimated ({_cpu_cores()} cores x {_cpu_watts() / _cpu_cores():g} W)"
    if gpus := _gpu_count():
        source += f", GPU estimated ({gpus} x {_gpu_watts():g} W)"
    return Energy(watts * seconds / 3600, source, False)


def _cpu_watts() -> float:
    per_core = float(os.environ.get("NATURELENS_CPU_WATTS_PER_CORE", CPU_WATTS_PER_CORE))
    return per_core * _cpu_cores()


def _gpu_watts() -> float:
    return float(os.environ.get("NATURELENS_GPU_WATTS", GPU_WATTS))


def _nvml_read(handles: list[Any]) -> list[int]:
    if not handles:
        return []
    import pynvml

    return [pynvml.nvmlDeviceGetTotalEnergyConsumption(h) for h in handles]

"""Timing and memory measurement shared by the benchmarks.

Time: wall clock around each call, after a device synchronisation, with the compared
variants interleaved (each repeat runs every variant once, in a rotated order) so that a
slow moment of a shared machine falls on all of them alike. Reported as the median and
the 25th-75th percentile spread of the repeats.

Memory, two measures, each saying what it counts:

- ``saved_for_backward_bytes``: bytes of the distinct tensor storages that autograd keeps
  between the forward and the backward pass (``torch.autograd.graph.saved_tensors_hooks``),
  leaving out the storages of the call's inputs (parameters, data, fixed buffers), which
  exist anyway. Exact and device-independent: it is the "activation memory" of a loss.
- ``peak_allocated_bytes``: the peak of memory allocated by torch during the call, above
  the level at its start. CUDA: ``torch.cuda.max_memory_allocated``. CPU: torch has no
  allocator statistics, so the allocation and free events that
  ``torch.profiler.profile(profile_memory=True)`` records for torch's CPU allocator are
  replayed in time order and their running sum's maximum is taken. Memory that a
  library (oneDNN, MKL, a sparse routine) allocates itself, and Python objects, are not
  seen; process RSS is not used (its high-water mark cannot be reset, and freed memory
  is kept by the C allocator).
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass

import torch
from torch.autograd import DeviceType
from torch.profiler import ProfilerActivity, profile


@dataclass
class Timing:
    """Seconds per call over ``n`` repeats."""

    median_s: float
    """Median of the repeats."""
    q25_s: float
    """25th percentile."""
    q75_s: float
    """75th percentile."""
    n: int
    """Number of timed repeats."""

    @classmethod
    def of(cls, seconds: list[float]) -> Timing:
        if len(seconds) == 1:
            return cls(seconds[0], seconds[0], seconds[0], 1)
        q25, _, q75 = statistics.quantiles(seconds, n=4, method="inclusive")
        return cls(statistics.median(seconds), q25, q75, len(seconds))

    @classmethod
    def ratio(cls, numerator: list[float], denominator: list[float]) -> Timing:
        """Per-repeat ratios of two interleaved series (same rounds), summarised."""
        return cls.of([a / b for a, b in zip(numerator, denominator)])

    def as_dict(self) -> dict[str, float | int]:
        return asdict(self)


def synchronize(device: torch.device | str) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def time_interleaved(
    calls: dict[str, Callable[[], object]],
    device: torch.device | str,
    repeats: int,
    warmup: int = 1,
) -> dict[str, list[float]]:
    """Seconds of each call in each of ``repeats`` interleaved rounds, after ``warmup``
    untimed rounds. Round ``r`` of every call ran at about the same time, so per-round
    ratios (:meth:`Timing.ratio`) cancel most of a shared machine's slow moments."""
    names = list(calls)
    seconds: dict[str, list[float]] = {name: [] for name in names}
    for round_ in range(warmup + repeats):
        shift = round_ % len(names)
        for name in names[shift:] + names[:shift]:
            synchronize(device)
            start = time.perf_counter()
            calls[name]()
            synchronize(device)
            if round_ >= warmup:
                seconds[name].append(time.perf_counter() - start)
    return seconds


def saved_for_backward_bytes(forward: Callable[[], torch.Tensor], inputs: Iterable[torch.Tensor]) -> int:
    """Bytes of the distinct storages autograd saves while ``forward()`` runs, other than
    the storages of ``inputs``. The returned loss is then backpropagated and dropped."""
    exclude = {t.untyped_storage().data_ptr() for t in inputs}
    storages: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        if storage.data_ptr() not in exclude:
            storages[storage.data_ptr()] = storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss = forward()
    loss.backward()
    return sum(storages.values())


def peak_allocated_bytes(call: Callable[[], object], device: torch.device | str) -> int:
    """Peak bytes allocated by torch during ``call()`` above the level at its start."""
    device = torch.device(device)
    if device.type == "cuda":
        synchronize(device)
        start = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        call()
        synchronize(device)
        return torch.cuda.max_memory_allocated(device) - start
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        call()
    # Every allocation (+bytes) and free (-bytes) is a "[memory]" event with its own time
    # stamp. (The per-operator summaries of prof.events() net the frees made inside an
    # operator against its allocations at the operator's start, which hides the peak of
    # a custom autograd Function's loop.)
    allocations = sorted(
        (e.start_ns(), e.nbytes())
        for e in prof.profiler.kineto_results.events()  # type: ignore[union-attr]
        if e.name() == "[memory]" and e.device_type() == DeviceType.CPU
    )
    running = peak = 0
    for _, n_bytes in allocations:
        running += n_bytes
        peak = max(peak, running)
    return peak


def memory_measure_note(device: torch.device | str) -> str:
    """One line saying what ``peak_allocated_bytes`` measured on this device."""
    if torch.device(device).type == "cuda":
        return "peak = torch.cuda.max_memory_allocated during the call, minus the allocated bytes at its start"
    return (
        "peak = maximum running sum, in time order, of the allocation/free events of torch's CPU "
        "allocator recorded by torch.profiler (profile_memory=True) during the call, above the level "
        "at its start; memory that a library (oneDNN, MKL) allocates itself is not seen"
    )


def log_log_slope(xs: list[float], ys: list[float]) -> float | None:
    """Least-squares slope of log(y) against log(x): the fitted growth exponent."""
    points = [(x, y) for x, y in zip(xs, ys) if x > 0 and y > 0]
    if len(points) < 2:
        return None
    lx = [math.log(x) for x, _ in points]
    ly = [math.log(y) for _, y in points]
    mx, my = statistics.fmean(lx), statistics.fmean(ly)
    var = sum((a - mx) ** 2 for a in lx)
    return sum((a - mx) * (b - my) for a, b in zip(lx, ly)) / var

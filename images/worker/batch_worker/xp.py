"""Array-backend selection: CuPy when a CUDA device is visible, NumPy otherwise.

Workloads written against the returned module (`xp.log`, `xp.bincount`, ...) run unchanged on
either backend. The environment variable `BATCH_WORKER_XP` (`numpy`, `cupy` or `auto`) overrides
the caller's preference, so a job definition can pin the backend without a code change.
"""
from __future__ import annotations

import logging
import os
from types import ModuleType
from typing import Any

import numpy

log = logging.getLogger(__name__)

ENV_VAR = "BATCH_WORKER_XP"
CHOICES = ("auto", "numpy", "cupy")


def _usable_cupy() -> ModuleType | None:
    """CuPy if it imports and sees at least one CUDA device, else None."""
    try:
        import cupy
    except Exception:  # not installed, or installed without working CUDA libraries
        return None
    try:
        if cupy.cuda.runtime.getDeviceCount() > 0:
            return cupy
    except Exception:  # no driver, or the driver refuses (e.g. no device in the container)
        return None
    return None


def get_xp(prefer: str = "auto") -> ModuleType:
    """The array module to compute with.

    `prefer` (overridden by `$BATCH_WORKER_XP` when set): "auto" takes CuPy when usable, else NumPy;
    "numpy" always NumPy; "cupy" takes CuPy and falls back to NumPy, with a warning, when CuPy or a
    CUDA device is missing.
    """
    choice = (os.environ.get(ENV_VAR) or prefer).strip().lower()
    if choice not in CHOICES:
        raise ValueError(f"array backend {choice!r}: expected one of {CHOICES} (from {ENV_VAR} or prefer=)")
    if choice == "numpy":
        return numpy
    cupy = _usable_cupy()
    if cupy is not None:
        return cupy
    if choice == "cupy":
        log.warning("array backend 'cupy' requested but CuPy or a CUDA device is unavailable; using NumPy")
    return numpy


def to_numpy(a: Any) -> numpy.ndarray:
    """`a` as a NumPy array, copying from the GPU when it is a CuPy array."""
    if type(a).__module__.split(".")[0] == "cupy":
        return a.get()
    return numpy.asarray(a)


def device_name(xp: ModuleType | None = None) -> str:
    """Human-readable name of the device `xp` (default: `get_xp()`) computes on, e.g. "cpu (numpy)"."""
    xp = xp if xp is not None else get_xp()
    if xp is numpy:
        return "cpu (numpy)"
    device = xp.cuda.Device()
    name = xp.cuda.runtime.getDeviceProperties(device.id)["name"]
    if isinstance(name, bytes):
        name = name.decode()
    return f"{name} (cupy, device {device.id})"

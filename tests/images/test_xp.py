"""The array backend (batch_worker.xp): BATCH_WORKER_XP overrides the caller's preference, CuPy is taken only when
usable, a CuPy request without it falls back to NumPy saying so, and a wrong choice names where it came from."""
from __future__ import annotations

import types

import numpy
import pytest

from batch_worker import xp

#: Stands in for CuPy where a test needs it usable (no GPU here).
USABLE_CUPY = types.ModuleType("cupy")


@pytest.fixture(autouse=True)
def no_choice_from_the_environment(monkeypatch):
    monkeypatch.delenv(xp.ENV_VAR, raising=False)


def test_auto_takes_cupy_only_when_it_is_usable(monkeypatch):
    monkeypatch.setattr(xp, "_usable_cupy", lambda: None)
    assert xp.get_xp() is numpy
    monkeypatch.setattr(xp, "_usable_cupy", lambda: USABLE_CUPY)
    assert xp.get_xp() is USABLE_CUPY
    assert xp.get_xp("numpy") is numpy


def test_the_environment_overrides_the_callers_preference(monkeypatch):
    monkeypatch.setattr(xp, "_usable_cupy", lambda: USABLE_CUPY)
    monkeypatch.setenv(xp.ENV_VAR, " NumPy ")
    assert xp.get_xp("cupy") is numpy


def test_cupy_asked_for_without_a_device_falls_back_to_numpy_with_a_warning(monkeypatch, caplog):
    monkeypatch.setattr(xp, "_usable_cupy", lambda: None)
    assert xp.get_xp("cupy") is numpy
    assert "'cupy' requested but CuPy or a CUDA device is unavailable; using NumPy" in caplog.text


def test_a_wrong_choice_names_the_variable(monkeypatch):
    monkeypatch.setenv(xp.ENV_VAR, "tpu")
    with pytest.raises(ValueError, match=r"backend 'tpu': expected one of .* \(from BATCH_WORKER_XP or prefer=\)"):
        xp.get_xp()


def test_numpy_arrays_and_the_cpu_read_as_themselves():
    assert isinstance(xp.to_numpy([1, 2]), numpy.ndarray)
    assert xp.device_name(numpy) == "cpu (numpy)"

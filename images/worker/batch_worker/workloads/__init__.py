"""Registry of workloads. A workload turns one batch (all rows of some units) into one output table.

A workload module defines a subclass of `Workload` and decorates it with `@register`.
The worker runtime looks workloads up by name; so does prep (for the schema) on the Airflow side.
"""
from __future__ import annotations

import importlib
from typing import Any, ClassVar

import pandas as pd

from batch_worker.schema import InputSchema


class BadData(Exception):
    """The batch itself is unusable: retrying will not help (the runtime exits with EXIT_BAD_DATA)."""


class TransientError(Exception):
    """A retry may succeed (a flaky dependency, a throttled call): the runtime exits with EXIT_TRANSIENT."""


class Workload:
    name: ClassVar[str]
    #: Bump when the code's results change: part of every batch's cache key.
    version: ClassVar[str]
    schema: ClassVar[InputSchema]
    default_params: ClassVar[dict[str, Any]] = {}

    def run(self, batch: pd.DataFrame, params: dict[str, Any]) -> pd.DataFrame:
        raise NotImplementedError

    def resolve_params(self, params: dict[str, Any] | None) -> dict[str, Any]:
        """The defaults updated with `params`, checked by `validate`; ValueError names the fields at fault."""
        merged = dict(self.default_params)
        unknown = set(params or {}) - set(merged)
        if unknown:
            raise ValueError(f"workload {self.name!r}: unknown parameter(s) {sorted(unknown)}; known: {sorted(merged)}")
        merged.update(params or {})
        problems = self.validate(merged)
        if problems:
            raise ValueError(f"workload {self.name!r} parameters: " + "; ".join(problems))
        return merged

    def validate(self, params: dict[str, Any]) -> list[str]:
        """Problems with resolved parameters, each naming the field(s) and what to change: types, ranges and
        constraints between fields. Called where parameters are resolved, so `plan` refuses them before
        anything is submitted."""
        return []


def number_problems(params: dict[str, Any], names: tuple[str, ...], *, integer: bool = False) -> list[str]:
    """One problem per field of `names` that is not a number (an integer when `integer`)."""
    wanted = int if integer else (int, float)
    return [f"{name} must be {'an integer' if integer else 'a number'}, got {params[name]!r}" for name in names
            if isinstance(params[name], bool) or not isinstance(params[name], wanted)]


_REGISTRY: dict[str, type[Workload]] = {}
_BUILTIN_MODULES = ("noop", "pricing", "gpu_cases")


def register(cls: type[Workload]) -> type[Workload]:
    _REGISTRY[cls.name] = cls
    return cls


def get_workload(name: str) -> Workload:
    if name not in _REGISTRY:
        for module in _BUILTIN_MODULES:
            try:
                importlib.import_module(f"batch_worker.workloads.{module}")
            except ModuleNotFoundError as exc:
                if exc.name != f"batch_worker.workloads.{module}":
                    raise
    if name not in _REGISTRY:
        raise KeyError(f"unknown workload {name!r}; registered: {sorted(_REGISTRY)}")
    return _REGISTRY[name]()

"""Outputs of two sides of a benchmark checked equal: a benchmark's figures count only for the same results."""
from __future__ import annotations

from typing import Iterable


def differences(left, right, *, key: Iterable[str], exact: Iterable[str], close: Iterable[str],
                names: tuple[str, str] = ("the pipeline", "the reference")) -> list[str]:
    """What differs between two outputs per unit `key` (empty when they are equal): `exact` columns must match,
    `close` ones agree within 1e-6 (relative)."""
    import numpy as np

    key = list(key)
    left = left.sort_values(key, ignore_index=True)
    right = right.sort_values(key, ignore_index=True)
    if len(left) != len(right) or not (left[key].to_numpy() == right[key].to_numpy()).all():
        return [f"units differ: {len(left)} from {names[0]}, {len(right)} from {names[1]}"]
    problems = []
    for column in exact:
        unequal = int((left[column].fillna("") != right[column].fillna("")).sum())
        if unequal:
            problems.append(f"{column} differs for {unequal} units")
    for column in close:
        a, b = left[column].to_numpy(float), right[column].to_numpy(float)
        near = np.isclose(a, b, rtol=1e-6, atol=1e-9, equal_nan=True)
        if not near.all():
            problems.append(f"{column} differs beyond 1e-6 for {int((~near).sum())} units")
    return problems

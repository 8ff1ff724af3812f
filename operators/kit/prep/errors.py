"""The errors prep raises: each names the input, file or column at fault and says what to do."""
from __future__ import annotations

import difflib
import re
from collections.abc import Iterable, Mapping, Sequence


class PrepError(ValueError):
    """The input cannot be prepared as it is; the message says where and what to do."""


class EmptyWindow(PrepError):
    """The input has no row in the run's window (rows outside it, or none at all)."""


class SchemaError(PrepError):
    """The input's columns do not match the schema; the message names every problem."""

    def __init__(self, missing: Sequence[str], mistyped: Sequence[tuple[str, str, str]],
                 near: Mapping[str, Sequence[str]] | None = None, source: str = ""):
        self.missing = tuple(missing)
        self.mistyped = tuple(mistyped)  # (column, expected dtype, found type)
        self.near = {name: tuple(found) for name, found in (near or {}).items() if found}
        problems = []
        if self.missing:
            problems.append("missing column(s): " + ", ".join(
                repr(name) + (f" (the input has {', '.join(map(repr, self.near[name]))})" if name in self.near else "")
                for name in self.missing))
        if self.mistyped:
            problems.append("mistyped column(s): " + ", ".join(
                f"{name!r} (expected {expected}, found {found})" for name, expected, found in self.mistyped))
        advice = []
        if self.near:
            advice.append("rename the input's columns to the schema's names (names are compared exactly)")
        if self.mistyped:
            advice.append("write each column with its schema type")
        where = f"input {source} " if source else "input "
        super().__init__(where + "does not match the schema: " + "; ".join(problems)
                         + ("; " + " and ".join(advice) if advice else ""))


def near_matches(name: str, found: Iterable[str]) -> list[str]:
    """Columns of `found` that look like `name`: equal but for case and blanks first, then close spellings."""
    found = list(found)
    squeezed = re.sub(r"[\s_-]", "", name).lower()
    same = [other for other in found if re.sub(r"[\s_-]", "", other).lower() == squeezed]
    close = difflib.get_close_matches(name.lower(), [other.lower() for other in found], n=3, cutoff=0.75)
    similar = [other for other in found if other.lower() in close and other not in same]
    return same + similar

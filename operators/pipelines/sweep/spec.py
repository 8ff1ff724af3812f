"""A sweep spec: which configurations to train, checked as a whole before anything is trained.

A spec is inline (the `sweep` param) or a file (`sweep_uri`: JSON of the same shape, or CSV), in
one of two forms:

    {"grid": {"l2": [0.1, 1, 10], "holdout_days": [14, 28]}, "resource_class": "CPU"}
    {"configurations": [{"id": "a", "hyperparameters": {"l2": 0.5}, "resource_class": "GPU"}, ...]}

A grid's configurations are every combination, named `<id_prefix><n>` in the grid's order. A CSV
has a column `id`, optionally `resource_class`, and one column per hyper-parameter (an empty cell
takes the default). The hyper-parameters are the packaging trainer's parameters; each is checked
against its type and range, and the trainer's cross-field rules apply. Every problem names its
configuration and field; up to MAX_PROBLEMS_SHOWN are listed.

A configuration's hyper-parameters are canonical: every trainer parameter (defaults filled in), each
value in one form (`Parameter.canonical`: `l2: 1`, `l2: 1.0` and a CSV's `1` are the same value),
and its key (`Configuration.key`) hashes them with sorted names. Two configurations of one sweep
with the same key are the same training: `duplicates` finds them, and the sweep trains the first.
"""
from __future__ import annotations

import csv
import hashlib
import io
import itertools
import json
from dataclasses import dataclass
from typing import Any

#: The worker's workload that trains a batch of configurations (`batch_worker.workloads.sweep`).
WORKLOAD = "sweep_train"
MAX_CONFIGURATIONS = 100_000
MAX_PROBLEMS_SHOWN = 20
#: The queue of each resource class.
RESOURCE_QUEUES = {"CPU": "airbatch-cpu", "GPU": "airbatch-gpu"}
SPEC_KEYS = {"grid", "configurations", "resource_class", "id_prefix"}
CONFIG_KEYS = {"id", "hyperparameters", "resource_class"}


class SweepSpecError(ValueError):
    """The spec cannot be trained as given; the message lists every problem found."""


@dataclass(frozen=True)
class Configuration:
    id: str
    hyperparameters: dict[str, Any]  # every trainer parameter, defaults filled in
    resource_class: str

    @property
    def queue(self) -> str:
        return RESOURCE_QUEUES[self.resource_class]

    def key(self, trainer: str, data_hash: str | None, version: str) -> str:
        """The configuration's identity for the cache: hyper-parameters, trainer, data and code version (not its id)."""
        text = json.dumps({"hyperparameters": self.hyperparameters, "trainer": trainer, "data": data_hash,
                           "version": str(version)}, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(text.encode()).hexdigest()[:32]


def trainer_parameters() -> dict[str, Any]:
    from batch_worker.workloads import get_workload
    from batch_worker.workloads.sweep import TRAINED_WORKLOAD

    return {p.name: p for p in get_workload(TRAINED_WORKLOAD).parameters}


def read_spec_file(uri: str, aws_conn_id: str | None = "aws_default") -> dict[str, Any]:
    """The spec in a JSON or CSV file under DATA_ROOT or AIRBATCH_INPUT_PREFIXES."""
    from operators.kit import engine, prep

    prep.check_input_uri(uri, prep.input_prefixes())
    if any(ch in uri for ch in "*?["):
        raise SweepSpecError(f"sweep_uri {uri!r}: name one file, without wildcards")
    try:
        raw = engine.location(uri, aws_conn_id).read_bytes()
    except FileNotFoundError:
        raise SweepSpecError(f"sweep_uri {uri!r}: no such file") from None
    if uri.lower().endswith(".json"):
        try:
            spec = json.loads(raw)
        except ValueError as exc:
            raise SweepSpecError(f"sweep_uri {uri!r}: not valid JSON: {exc}") from None
        if not isinstance(spec, dict):
            raise SweepSpecError(f"sweep_uri {uri!r}: the JSON must be an object with 'grid' or 'configurations'")
        return spec
    if uri.lower().endswith(".csv"):
        return csv_spec(raw.decode("utf-8-sig"), uri)
    raise SweepSpecError(f"sweep_uri {uri!r}: give a .json or .csv file")


def csv_spec(text: str, where: str = "the CSV") -> dict[str, Any]:
    """A CSV (id, resource_class, one column per hyper-parameter) as a `configurations` spec."""
    parameters = trainer_parameters()
    reader = csv.DictReader(io.StringIO(text))
    columns = reader.fieldnames or []
    if "id" not in columns:
        raise SweepSpecError(f"{where}: no 'id' column (found {columns}); give each configuration an id")
    unknown = [c for c in columns if c not in parameters and c not in ("id", "resource_class")]
    if unknown:
        raise SweepSpecError(f"{where}: unknown column(s) {unknown}; hyper-parameters are {sorted(parameters)}")
    configurations = []
    problems = []
    for line, row in enumerate(reader, start=2):
        hyper = {}
        for name in columns:
            if name in ("id", "resource_class") or row.get(name) in (None, ""):
                continue
            value, problem = _cell(row[name], parameters[name].kind)
            if problem:
                problems.append(f"line {line} (configuration {row['id']!r}), column {name}: {problem}")
            hyper[name] = value
        configurations.append({"id": row["id"], "hyperparameters": hyper,
                               **({"resource_class": row["resource_class"]} if row.get("resource_class") else {})})
        if len(configurations) > MAX_CONFIGURATIONS:
            raise SweepSpecError(f"{where}: more than {MAX_CONFIGURATIONS:,} configurations; split the sweep")
    if problems:
        raise SweepSpecError(_listing(f"{where}: {len(problems)} bad value(s)", problems))
    return {"configurations": configurations}


def _cell(text: str, kind: str) -> tuple[Any, str | None]:
    try:
        if kind == "integer":
            return int(text), None
        if kind == "number":
            return float(text), None
    except ValueError:
        return text, f"{text!r} is not {'an integer' if kind == 'integer' else 'a number'}"
    return text, None


def expand(spec: dict[str, Any]) -> list[dict[str, Any]]:
    """The spec's configurations as given (a grid becomes every combination)."""
    if not isinstance(spec, dict):
        raise SweepSpecError("the sweep spec must be an object with 'grid' or 'configurations'")
    unknown = sorted(set(spec) - SPEC_KEYS)
    if unknown:
        raise SweepSpecError(f"the sweep spec has unknown field(s) {unknown}; known: {sorted(SPEC_KEYS)}")
    if ("grid" in spec) == ("configurations" in spec):
        raise SweepSpecError("the sweep spec needs exactly one of 'grid' (values per hyper-parameter) or "
                             "'configurations' (a list)")
    default_class = spec.get("resource_class", "CPU")
    if "configurations" in spec:
        listed = spec["configurations"]
        if not isinstance(listed, list) or not listed:
            raise SweepSpecError("'configurations' must be a non-empty list of {id, hyperparameters, resource_class}")
        if len(listed) > MAX_CONFIGURATIONS:
            raise SweepSpecError(f"'configurations' holds {len(listed):,} entries, more than {MAX_CONFIGURATIONS:,}; "
                                 "split the sweep")
        return [{"resource_class": default_class, **c} if isinstance(c, dict) else c for c in listed]
    grid = spec["grid"]
    if not isinstance(grid, dict) or not grid:
        raise SweepSpecError("'grid' must be a non-empty object: hyper-parameter -> list of values")
    for name, values in grid.items():
        if not isinstance(values, list) or not values:
            raise SweepSpecError(f"grid field {name!r}: give a non-empty list of values, got {values!r}")
    size = 1
    for values in grid.values():
        size *= len(values)
    if size > MAX_CONFIGURATIONS:
        raise SweepSpecError(f"the grid makes {size:,} configurations, more than {MAX_CONFIGURATIONS:,}; "
                             "split the sweep")
    prefix = str(spec.get("id_prefix", "c"))
    names = list(grid)
    return [{"id": f"{prefix}{n}", "hyperparameters": dict(zip(names, combo)), "resource_class": default_class}
            for n, combo in enumerate(itertools.product(*(grid[name] for name in names)))]


def validate(entries: list[Any]) -> list[Configuration]:
    """Every entry checked (ids, fields, hyper-parameters, resource class); raises SweepSpecError listing problems."""
    from batch_worker.workloads import get_workload
    from batch_worker.workloads.sweep import TRAINED_WORKLOAD

    trainer = get_workload(TRAINED_WORKLOAD)
    parameters = trainer_parameters()
    problems: list[str] = []
    seen: dict[str, int] = {}
    configurations = []
    for position, entry in enumerate(entries):
        if not isinstance(entry, dict):
            problems.append(f"configuration #{position}: must be an object with id, hyperparameters, resource_class")
            continue
        cid = entry.get("id")
        where = f"configuration {cid!r}" if isinstance(cid, str) and cid else f"configuration #{position}"
        if not isinstance(cid, str) or not cid.strip() or len(cid) > 200:
            problems.append(f"{where}: field id must be a non-empty text of at most 200 characters")
        elif cid in seen:
            problems.append(f"{where}: field id repeats configuration #{seen[cid]}; ids must be unique")
        else:
            seen[cid] = position
        unknown = sorted(set(entry) - CONFIG_KEYS)
        if unknown:
            problems.append(f"{where}: unknown field(s) {unknown}; known: {sorted(CONFIG_KEYS)}")
        resource = entry.get("resource_class", "CPU")
        if resource not in RESOURCE_QUEUES:
            problems.append(f"{where}: field resource_class must be one of {sorted(RESOURCE_QUEUES)}, got {resource!r}")
        hyper = entry.get("hyperparameters", {})
        if not isinstance(hyper, dict):
            problems.append(f"{where}: field hyperparameters must be an object, got {hyper!r}")
            continue
        # one form per value (`l2: 1` is `l2: 1.0`), so that equal configurations get equal keys
        hyper = {name: parameters[name].canonical(value) if name in parameters else value
                 for name, value in hyper.items()}
        bad_names = sorted(set(hyper) - set(parameters))
        if bad_names:
            problems.append(f"{where}: unknown hyper-parameter(s) {bad_names}; known: {sorted(parameters)}")
        value_problems = [p for name, value in hyper.items() if name in parameters
                          for p in parameters[name].problems(value)]
        problems += [f"{where}: hyperparameters.{p}" for p in value_problems]
        if bad_names or value_problems:
            continue
        resolved = {name: hyper.get(name, p.default) for name, p in parameters.items()}
        problems += [f"{where}: {p}" for p in trainer.validate(resolved)]
        if isinstance(cid, str) and resource in RESOURCE_QUEUES:
            configurations.append(Configuration(cid, resolved, resource))
    if problems:
        raise SweepSpecError(_listing(f"the sweep spec has {len(problems)} problem(s); nothing was trained",
                                      problems))
    return configurations


def duplicates(keyed: list[tuple[Configuration, str]]) -> dict[str, str]:
    """{configuration id: id of the first configuration with the same key} for every configuration that repeats an
    earlier one's training (same hyper-parameters, trainer, data and code: ids and resource classes aside)."""
    first: dict[str, str] = {}
    repeats: dict[str, str] = {}
    for configuration, key in keyed:
        if key in first:
            repeats[configuration.id] = first[key]
        else:
            first[key] = configuration.id
    return repeats


def _listing(head: str, problems: list[str]) -> str:
    shown = problems[:MAX_PROBLEMS_SHOWN]
    more = f"\n  ... and {len(problems) - len(shown)} more" if len(problems) > len(shown) else ""
    return head + ":\n  " + "\n  ".join(shown) + more


def load(inline: dict[str, Any] | None, uri: str | None, aws_conn_id: str | None = "aws_default") -> list[Configuration]:
    """The checked configurations of the inline spec or the file; exactly one must be given."""
    if bool(inline) == bool(uri):
        raise SweepSpecError("give the sweep either inline (param 'sweep') or as a file (param 'sweep_uri'), "
                             "not both and not neither")
    return validate(expand(inline if inline else read_spec_file(uri, aws_conn_id)))

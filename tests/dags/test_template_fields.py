"""No user-supplied value is ever rendered as a Jinja template.

Airflow renders every string inside an operator's `template_fields` (and its `map_index_template`),
including strings that came from run params through an upstream task's XCom: a param such as
"{{ conn.aws_default.password }}" would then read a secret into files and job descriptions. This
lists every templated field of every task (and failure notifier) in the project's DAGs and fails
when one can carry user data:

- a field filled at run time by `expand_kwargs()` from an upstream task (any key can arrive);
- a field listed in `expand()`;
- a template the project writes that reads a param without an `enum` (only a fixed set of
  values may reach it), or that reads connections or variables.

XComArgs in a plain task's arguments are resolved, not rendered, so they pass.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Iterator

import jinja2
import pytest
from jinja2 import nodes

from airflow.dag_processing.dagbag import DagBag
from airflow.sdk.definitions._internal.mixins import ResolveMixin

REPO = Path(__file__).resolve().parents[2]
JINJA_MARKERS = ("{{", "{%", "{#")
SECRET_NAMES = {"conn", "var", "macros"}


def strings(value: Any) -> Iterator[str]:
    """Every string a render of `value` would treat as a template (resolved XComArgs excluded)."""
    if isinstance(value, str):
        yield value
    elif isinstance(value, ResolveMixin):
        return
    elif isinstance(value, dict):
        for item in value.values():
            yield from strings(item)
    elif isinstance(value, (list, tuple, set)):
        for item in value:
            yield from strings(item)


def template_problems(text: str, params: Any) -> list[str]:
    """Why the template `text` could render user data (empty when it reads only constrained values)."""
    if not any(marker in text for marker in JINJA_MARKERS):
        return []
    tree = jinja2.Environment().parse(text)
    problems = []
    allowed = set()
    for node in tree.find_all((nodes.Getattr, nodes.Getitem)):
        if isinstance(node.node, nodes.Name) and node.node.name == "params":
            name = node.attr if isinstance(node, nodes.Getattr) else getattr(node.arg, "value", None)
            allowed.add(id(node.node))
            schema = params.get_param(name).schema if name in params else {}
            if "enum" not in schema:
                problems.append(f"reads param {name!r}, which has no enum: any string a user types would be rendered")
    for name in tree.find_all(nodes.Name):
        if name.name == "params" and id(name) not in allowed:
            problems.append("uses the whole params dict")
        if name.name in SECRET_NAMES:
            problems.append(f"reads {name.name!r}")
    return problems


def task_problems(task, dag) -> list[str]:
    problems = []
    fields = tuple(task.template_fields)
    if hasattr(task, "partial_kwargs"):  # a mapped task
        expand = task._get_specified_expand_input()
        value = expand.value
        if isinstance(value, ResolveMixin):
            unset = [f for f in fields if f not in task.partial_kwargs]
            if unset:
                problems.append(f"templated field(s) {unset} may be filled by expand_kwargs() from an upstream task")
        elif isinstance(value, dict):
            mapped = sorted(set(value) & set(fields))
            if mapped:
                problems.append(f"templated field(s) {mapped} are expanded from upstream values")
        values = {f: task.partial_kwargs.get(f) for f in fields}
        values["map_index_template"] = task.partial_kwargs.get("map_index_template")
    else:
        values = {f: getattr(task, f, None) for f in fields}
        values["map_index_template"] = getattr(task, "map_index_template", None)
    callbacks = task.partial_kwargs.get("on_failure_callback") if hasattr(task, "partial_kwargs") \
        else task.on_failure_callback
    for notifier in callbacks if isinstance(callbacks, list) else [callbacks] if callbacks else []:
        for field in getattr(notifier, "template_fields", ()):
            values[f"{type(notifier).__name__}.{field}"] = getattr(notifier, field)
    for field, value in values.items():
        for text in strings(value):
            problems += [f"{field}: {problem} in {text[:80]!r}" for problem in template_problems(text, dag.params)]
    return problems


def templated_fields_table(bag: DagBag) -> list[str]:
    return [f"{dag_id}.{task.task_id} ({type(task).__name__}): {tuple(task.template_fields)}"
            for dag_id, dag in sorted(bag.dags.items()) for task in dag.tasks]


@pytest.fixture(scope="module")
def bag():
    bag = DagBag(dag_folder=str(REPO / "dags"))
    assert not bag.import_errors
    return bag


def test_no_templated_field_of_any_task_can_carry_user_params(bag):
    problems = [f"{dag_id}.{task.task_id}: {problem}" for dag_id, dag in sorted(bag.dags.items())
                for task in dag.tasks for problem in task_problems(task, dag)]
    assert not problems, "\n".join(problems + ["", "every task's template_fields:", *templated_fields_table(bag)])


def test_the_batch_operators_render_nothing(bag):
    from operators.kit.batch import HouseBatchOperator, UnitsOfWorkOperator

    assert HouseBatchOperator.template_fields == () and UnitsOfWorkOperator.template_fields == ()
    shard_tasks = [task for dag in bag.dags.values() for task in dag.tasks
                   if task.operator_name in ("HouseBatchOperator", "UnitsOfWorkOperator")]
    assert {task.dag_id for task in shard_tasks} == set(bag.dag_ids)  # every DAG submits its Batch jobs here


def test_the_check_catches_each_kind_of_user_data_in_a_templated_field():
    from airflow.providers.standard.operators.bash import BashOperator
    from airflow.sdk import DAG, Param, task

    from operators.kit.batch import HouseBatchOperator

    class TemplatedBatch(HouseBatchOperator):
        template_fields = ("job_name", "parameters")

    with DAG("probe", schedule=None, params={"salt": Param("", type="string"),
                                             "queue": Param("a", type="string", enum=["a", "b"])}) as dag:
        @task
        def upstream() -> list[dict]:
            return []

        free = BashOperator(task_id="free", bash_command="echo {{ params.salt }}")
        whole = BashOperator(task_id="whole", bash_command="echo {{ params }}")
        secret = BashOperator(task_id="secret", bash_command="echo {{ conn.aws_default.password }}")
        constrained = BashOperator(task_id="constrained", bash_command="echo {{ params.queue }} {{ params['queue'] }}")
        mapped = TemplatedBatch.partial(task_id="mapped", job_queue="q", job_definition="d").expand_kwargs(upstream())

    found = {t.task_id: task_problems(t, dag) for t in (free, whole, secret, constrained, mapped)}
    assert "no enum" in found["free"][0]
    assert "whole params" in found["whole"][0]
    assert "'conn'" in found["secret"][0]
    assert found["constrained"] == []
    assert "['job_name', 'parameters']" in found["mapped"][0]

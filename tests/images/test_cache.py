"""The contract between the house operator and the runtime (batch_worker.cache): cache keys, done-markers, each
child's slice of the worklist, and the failure line a child logs when it cannot write `_FAILED.json`."""
from __future__ import annotations

import json

import pytest

from batch_worker.cache import (FAILURE_LINE_TAG, cache_key, child_slice, children_needed, failure_line,
                                is_valid_done, parse_failure_line)


def test_cache_key_changes_with_content_code_version_and_params():
    base = cache_key("abc", "noop", "1", {"salt": ""})
    assert base == cache_key("abc", "noop", "1", {"salt": ""})
    assert len({base, cache_key("abd", "noop", "1", {"salt": ""}), cache_key("abc", "noop", "2", {"salt": ""}),
                cache_key("abc", "noop", "1", {"salt": "x"}), cache_key("abc", "pricing", "1", {"salt": ""})}) == 5


@pytest.mark.parametrize("raw, done", [
    (b'{"key": "k1", "status": "done"}', True),
    (b'{"key": "k2", "status": "done"}', False),  # another batch's marker
    (b'{"key": "k1", "status": "done"', False),  # truncated
    (b'{"key": "k1", "status": "failed"}', False),
    (b'["k1"]', False),
    (b"", False),
    (None, False),
])
def test_a_done_marker_counts_only_when_whole_and_naming_its_key(raw, done):
    assert is_valid_done(raw, "k1") is done


def test_each_child_takes_its_slice_and_the_children_cover_every_batch():
    items = [{"key": f"k{i}"} for i in range(7)]
    children = children_needed(len(items), 3)
    assert children == 3
    assert [child_slice(items, 3, i) for i in range(children)] == [items[0:3], items[3:6], items[6:7]]
    with pytest.raises(ValueError, match="batches_per_child must be at least 1, got 0"):
        child_slice(items, 0, 0)


def test_a_failure_line_reads_back_and_other_lines_read_as_none():
    record = {"class": "bad_data", "error": "value is not finite", "key": "k1"}
    line = failure_line(record)
    assert line.startswith(FAILURE_LINE_TAG + " ")
    assert parse_failure_line(f"2026-01-01 INFO {line}") == record  # wherever the log puts it in the line
    assert parse_failure_line("an ordinary log line") is None
    assert parse_failure_line(f"{FAILURE_LINE_TAG} not json") is None
    assert parse_failure_line(f"{FAILURE_LINE_TAG} {json.dumps({'class': 'error'})}") is None  # no error text

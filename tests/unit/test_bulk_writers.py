"""The line -> row bookkeeping of a COPY stream (no database)."""

from __future__ import annotations

import pytest

from vecorm.scale.bulk_writers import Lines


def test_lines_keep_runs_and_find_every_row() -> None:
    lines = Lines()
    rows = [*range(0, 5000), *range(5000, 10000, 2), 10001, 10002, 20000]
    for start in range(0, len(rows), 700):  # written batch by batch
        lines.extend(rows[start : start + 700])
    assert len(lines) == len(rows)
    assert [lines[n] for n in range(len(lines))] == rows
    assert lines[-1] == 20000
    # consecutive rows share a run, whatever the batches
    assert len(lines._starts) < 2600
    with pytest.raises(IndexError):
        lines[len(rows)]

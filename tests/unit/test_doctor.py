"""``vecorm doctor``'s checks that need no database (the others run in tests/e2e/test_cli.py)."""

from __future__ import annotations

from vecorm.tools.doctor import buffers_finding

MB = 1 << 20


def test_an_index_larger_than_shared_buffers_is_a_warning_with_a_hint() -> None:
    finding = buffers_finding("Document", "ix_documents_hnsw", 544 * MB, 128 * MB)
    assert finding.status == "warn"
    assert finding.message.startswith(
        "ix_documents_hnsw is 544.0 MB, shared_buffers 128.0 MB: searches read the index's pages"
    )
    assert finding.hint is not None and "shared_buffers" in finding.hint


def test_an_index_within_shared_buffers_is_ok() -> None:
    finding = buffers_finding("Document", "ix_documents_hnsw", 128 * MB, 128 * MB)
    assert (finding.status, finding.message, finding.hint) == (
        "ok",
        "ix_documents_hnsw is 128.0 MB, shared_buffers 128.0 MB",
        None,
    )


def test_a_small_index_is_shown_in_kilobytes() -> None:
    assert buffers_finding("Document", "ix", 40 * 1024, 128 * MB).message == (
        "ix is 40 kB, shared_buffers 128.0 MB"
    )

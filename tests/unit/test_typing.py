"""The class helpers are typed: a misspelt keyword fails ``mypy --strict`` where it is written,
not at run time (they took ``**options: Any`` before)."""

from __future__ import annotations

from pathlib import Path

from mypy import api

SNIPPET = """
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
import vecorm

class Base(DeclarativeBase):
    pass

class Doc(vecorm.Searchable, Base):
    __tablename__ = "docs"
    __vecorm__ = vecorm.SearchConfig(fields=("body",), dimensions=3)
    id: Mapped[int] = mapped_column(primary_key=True)
    body: Mapped[str]

Doc.text_search("vacuum", k=5, mode="all", k1=1.2)
Doc.hybrid_search("vacuum", k=5, method="rrf", depth=50)
Doc.text_search("vacuum", mod="all")
Doc.hybrid_search("vacuum", metod="rrf")
Doc.text_search("vacuum", mode="every")
"""


def test_misspelt_keywords_fail_mypy(tmp_path: Path) -> None:
    source = tmp_path / "usage.py"
    source.write_text(SNIPPET)
    report, _, status = api.run(
        ["--strict", "--no-incremental", "--follow-imports=silent", str(source)]
    )
    errors = [line for line in report.splitlines() if ": error:" in line]
    assert status == 1
    assert [line.split(":")[1] for line in errors] == ["16", "17", "18"], report
    assert 'Unexpected keyword argument "mod"' in errors[0]
    assert 'Unexpected keyword argument "metod"' in errors[1]
    assert 'Argument "mode" to "text_search"' in errors[2] and "'every'" in errors[2]

"""A throwaway Alembic project per test, laid down by ``vecorm init`` and run in-process.

Each version of the models is written as a new module (``models_<random>.py``) in the project
directory and named in alembic.ini, so SQLAlchemy registries and ``sys.modules`` never mix
models across versions or tests.
"""

from __future__ import annotations

import re
import subprocess
import sys
import textwrap
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from alembic import command
from alembic.config import Config
from sqlalchemy import URL, Engine, create_engine

from vecorm.tools.scaffold import init_migrations


@dataclass
class Project:
    root: Path
    url: URL
    use_async: bool
    engine: Engine
    modules: list[str] = field(default_factory=list)

    @property
    def ini(self) -> Path:
        return self.root / "alembic.ini"

    @property
    def versions(self) -> Path:
        return self.root / "migrations" / "versions"

    def config(self) -> Config:
        config = Config(str(self.ini))
        config.attributes["configure_logger"] = False
        return config

    def set_models(self, source: str) -> str:
        """Write ``source`` as a fresh module and point ``target_metadata`` at its ``Base``."""
        name = f"models_{uuid.uuid4().hex[:12]}"
        (self.root / f"{name}.py").write_text(textwrap.dedent(source), encoding="utf-8")
        self.modules.append(name)
        text = self.ini.read_text(encoding="utf-8")
        text = re.sub(r"(?m)^target_metadata = .*$", f"target_metadata = {name}:Base", text)
        self.ini.write_text(text, encoding="utf-8")
        return name

    def autogenerate(self, message: str) -> Path:
        """Run ``alembic revision --autogenerate`` and return the new file."""
        before = set(self.versions.glob("*.py"))
        command.revision(self.config(), message=message, autogenerate=True)
        (created,) = set(self.versions.glob("*.py")) - before
        return created

    def autogenerate_empty(self, message: str) -> str:
        """Run ``alembic revision`` (no autogenerate) and return the new revision id."""
        script = command.revision(self.config(), message=message)
        assert script is not None and not isinstance(script, list)
        return str(script.revision)

    def upgrade(self, revision: str = "head") -> None:
        command.upgrade(self.config(), revision)

    def downgrade(self, revision: str) -> None:
        command.downgrade(self.config(), revision)


@pytest.fixture(params=["sync", "async"])
def flavour(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def make_project(
    root: Path, url: URL, *, use_async: bool, format_with_ruff: bool = False
) -> Project:
    # Tests read revisions as Alembic renders them; test_scaffold checks the ruff hooks.
    init_migrations(
        root / "migrations",
        ini_path=root / "alembic.ini",
        use_async=use_async,
        target_metadata="",
        database_url=url.render_as_string(hide_password=False),
        format_with_ruff=format_with_ruff,
    )
    return Project(root, url, use_async, create_engine(url))


@pytest.fixture
def project_factory(tmp_path: Path, vecorm_url: URL) -> Iterator[object]:
    made: list[Project] = []

    def factory(use_async: bool = False, format_with_ruff: bool = False) -> Project:
        project = make_project(
            tmp_path, vecorm_url, use_async=use_async, format_with_ruff=format_with_ruff
        )
        made.append(project)
        sys.path.insert(0, str(tmp_path))
        return project

    yield factory
    for project in made:
        project.engine.dispose()
        for name in project.modules:
            sys.modules.pop(name, None)
    if str(tmp_path) in sys.path:
        sys.path.remove(str(tmp_path))


def body(revision: Path, function: str) -> str:
    """The statements inside ``def <function>()`` of a revision, Alembic's comments removed."""
    text = revision.read_text(encoding="utf-8")
    match = re.search(rf"def {function}\(\) -> None:\n(.*?)(?=\ndef |\Z)", text, re.S)
    assert match, text
    lines = [
        line.strip()
        for line in match.group(1).splitlines()
        if line.strip() and not line.strip().startswith(("#", '"""'))
    ]
    return "\n".join(lines)


def undefined_names(revision: Path) -> str:
    """ruff's F821 (undefined name) findings for a revision file."""
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "ruff",
            "check",
            "--no-cache",
            "--isolated",
            "--select",
            "F821",
            "--output-format",
            "concise",
            str(revision),
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    return result.stdout if result.returncode else ""

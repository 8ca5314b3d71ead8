"""``vecorm init``: the migrations template, from the repository and from an installed wheel."""

from __future__ import annotations

import os
import subprocess
import sys
import sysconfig
import venv
from collections.abc import Callable
from pathlib import Path

import pytest
from click.testing import CliRunner

from tests.alembic.conftest import Project
from vecorm.tools.cli import main
from vecorm.tools.scaffold import init_migrations

REPOSITORY = Path(__file__).resolve().parents[2]


def test_init_writes_an_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    runner = CliRunner()
    monkeypatch.chdir(tmp_path)
    result = runner.invoke(main, ["init", "migrations", "--async", "--metadata", "app:Base"])
    assert result.exit_code == 0, result.output
    root = Path.cwd()
    assert sorted(p.name for p in (root / "migrations").iterdir()) == [
        "README",
        "env.py",
        "script.py.mako",
        "versions",
    ]
    env_py = (root / "migrations" / "env.py").read_text()
    assert "import vecorm.alembic" in env_py and "create_async_engine" in env_py
    ini = (root / "alembic.ini").read_text()
    assert "script_location = %(here)s/migrations\n" in ini
    assert "target_metadata = app:Base\n" in ini

    again = runner.invoke(main, ["init", "migrations"])
    assert again.exit_code == 1
    assert "already exists and is not empty" in again.output
    assert "Traceback" not in again.output


def test_sync_flavour_differs_only_in_env_py(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    runner = CliRunner()
    monkeypatch.chdir(tmp_path)
    assert runner.invoke(main, ["init", "db/migrations", "--ini", "db/alembic.ini"]).exit_code == 0
    env_py = Path("db/migrations/env.py").read_text()
    assert "create_async_engine" not in env_py and "create_engine(" in env_py
    assert "script_location = %(here)s/migrations\n" in Path("db/alembic.ini").read_text()


@pytest.mark.slow
def test_init_from_an_installed_wheel(tmp_path: Path) -> None:
    """The template ships in the wheel (hatch force-include) and loads via importlib.resources."""
    dist = tmp_path / "dist"
    subprocess.run(
        [sys.executable, "-m", "build", "--wheel", "--outdir", str(dist), str(REPOSITORY)],
        check=True,
        capture_output=True,
    )
    (wheel,) = dist.glob("vecorm-*.whl")
    environment = tmp_path / "venv"
    venv.create(environment, with_pip=True)
    python = environment / "bin" / "python"
    subprocess.run(
        [str(python), "-m", "pip", "install", "-q", "--no-deps", str(wheel)],
        check=True,
        capture_output=True,
    )
    # Dependencies from this environment; vecorm itself only from the wheel.
    env = {**os.environ, "PYTHONPATH": sysconfig.get_paths()["purelib"]}
    project = tmp_path / "project"
    project.mkdir()
    result = subprocess.run(
        [
            str(python),
            "-c",
            "import vecorm.tools.scaffold as s, sys; sys.argv = ['vecorm', 'init', 'migrations'];"
            "print(s.template_root());"
            "from vecorm.tools.cli import main; main()",
        ],
        cwd=project,
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[0].startswith(str(environment))
    assert (project / "migrations" / "env.py").read_text().count("import vecorm.alembic") == 1
    assert (project / "alembic.ini").exists()


def test_revisions_come_out_ruff_clean(project_factory: Callable[..., Project]) -> None:
    """The template's post_write_hooks run ruff on each revision (tox -e lint covers them).

    Both runs use this process's working directory, so the same ruff configuration applies.
    """
    project = project_factory(format_with_ruff=True)
    assert "\nhooks = ruff_check, ruff_format\n" in project.ini.read_text()
    project.set_models(RUFF_MODELS)
    revision = project.autogenerate("searchable notes")
    for arguments in (["check", "--no-cache"], ["format", "--check", "--no-cache"]):
        checked = subprocess.run(
            [sys.executable, "-m", "ruff", *arguments, str(revision)],
            capture_output=True,
            text=True,
        )
        assert checked.returncode == 0, checked.stdout + checked.stderr
    project.upgrade()  # what ruff left still runs
    project.downgrade("base")


def test_the_template_writes_no_trailing_whitespace(
    project_factory: Callable[..., Project],
) -> None:
    """The first revision's ``Revises:`` (no parent) included: else the ruff_check hook
    reports W291, an unsafe fix it leaves to ruff_format, on every new project's first
    revision."""
    project = project_factory(format_with_ruff=False)
    project.set_models(RUFF_MODELS)
    first = project.autogenerate("searchable notes").read_text()
    assert "\nRevises:\n" in first
    revision = project.autogenerate_empty("empty")
    (path,) = project.versions.glob(f"*{revision}*.py")
    second = path.read_text()
    assert "\nRevises: " in second
    for text in (first, second):
        assert [line for line in text.splitlines() if line != line.rstrip()] == []


def test_without_ruff_the_hooks_are_written_commented_out(tmp_path: Path) -> None:
    init_migrations(
        tmp_path / "migrations", ini_path=tmp_path / "alembic.ini", format_with_ruff=False
    )
    ini = (tmp_path / "alembic.ini").read_text()
    assert "\nhooks =" not in ini
    assert "# hooks = ruff_check, ruff_format\n" in ini and "pip install ruff" in ini


RUFF_MODELS = """
    from sqlalchemy import String
    from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

    import vecorm

    class Base(DeclarativeBase):
        pass

    class Note(vecorm.Searchable, Base):
        __tablename__ = "notes"
        __vecorm__ = vecorm.SearchConfig(fields=("title", "body"), dimensions=3)
        id: Mapped[int] = mapped_column(primary_key=True)
        title: Mapped[str] = mapped_column(String(200))
        body: Mapped[str | None]
"""

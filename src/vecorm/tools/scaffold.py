"""Lay down an Alembic environment that already knows vecorm (``vecorm init DIR``).

The template ships inside the wheel as ``vecorm/migrations_template`` (the repository's
top-level ``migrations_template/``, mapped by hatch); an editable install reads the repository
copy. Two flavours share ``alembic.ini`` and ``script.py.mako`` and differ in ``env.py``::

    from vecorm.tools.scaffold import init_migrations

    init_migrations("migrations", ini_path="alembic.ini", target_metadata="myapp.models:Base")
    # alembic.ini, migrations/{env.py,script.py.mako,README,versions/}

    init_migrations("migrations", use_async=True)   # env.py on an AsyncEngine

Each new revision is then linted and formatted by ruff through Alembic's ``post_write_hooks``
(when ruff is installed where ``vecorm init`` runs; otherwise the hooks are written commented
out, with the line that turns them on).
"""

from __future__ import annotations

import importlib.util
import os
from importlib import resources
from importlib.resources.abc import Traversable
from pathlib import Path

from vecorm.errors import ConfigurationError

_PACKAGE_TEMPLATE = "migrations_template"


def template_root() -> Traversable:
    """The migrations template: package data in a wheel, the repository copy when editable."""
    packaged = resources.files("vecorm").joinpath(_PACKAGE_TEMPLATE)
    if packaged.is_dir():
        return packaged
    repository = Path(__file__).resolve().parents[3] / _PACKAGE_TEMPLATE
    if repository.is_dir():
        return repository
    raise ConfigurationError(  # pragma: no cover - a broken installation
        "vecorm's migrations template is missing from this installation; reinstall vecorm"
    )


def init_migrations(
    directory: str | os.PathLike[str],
    *,
    ini_path: str | os.PathLike[str] = "alembic.ini",
    use_async: bool = False,
    target_metadata: str = "",
    database_url: str = "",
    format_with_ruff: bool | None = None,
) -> list[Path]:
    """Create ``directory`` (env.py, script.py.mako, README, versions/) and ``ini_path``.

    ``directory`` must be absent or empty; an existing ``ini_path`` is left alone. Returns the
    files written. ``script_location`` is stored relative to the ini file (``%(here)s/...``).
    ``format_with_ruff`` turns on the ruff ``post_write_hooks``; ``None`` means "if ruff is
    installed" (a hook whose module is missing would make every ``alembic revision`` fail).
    """
    target = Path(directory)
    if target.exists() and any(target.iterdir()):
        raise ConfigurationError(
            f"{target} already exists and is not empty; choose a new directory "
            "(your existing env.py only needs `import vecorm.alembic`)"
        )
    root = template_root()
    flavour = "async" if use_async else "sync"
    (target / "versions").mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    for source in (
        root.joinpath("common", "script.py.mako"),
        root.joinpath("common", "README"),
        root.joinpath(flavour, "env.py"),
    ):
        destination = target / source.name
        destination.write_text(source.read_text(encoding="utf-8"), encoding="utf-8")
        written.append(destination)
    ini = Path(ini_path)
    if not ini.exists():
        text = root.joinpath("common", "alembic.ini.tmpl").read_text(encoding="utf-8")
        values = {
            "flavour": flavour,
            "script_location": _script_location(target, ini),
            "target_metadata": target_metadata,
            "sqlalchemy_url": database_url.replace("%", "%%"),
            "post_write_hooks": _post_write_hooks(format_with_ruff),
        }
        for key, value in values.items():
            text = text.replace("{" + key + "}", value)
        ini.parent.mkdir(parents=True, exist_ok=True)
        ini.write_text(text, encoding="utf-8")
        written.append(ini)
    return written


_RUFF_HOOKS = """\
# Each new revision is linted (safe fixes) and formatted by ruff, as the rest of your code is.
hooks = ruff_check, ruff_format
ruff_check.type = module
ruff_check.module = ruff
ruff_check.options = check --fix --quiet REVISION_SCRIPT_FILENAME
ruff_format.type = module
ruff_format.module = ruff
ruff_format.options = format --quiet REVISION_SCRIPT_FILENAME"""


def _post_write_hooks(format_with_ruff: bool | None) -> str:
    enabled = (
        importlib.util.find_spec("ruff") is not None
        if format_with_ruff is None
        else format_with_ruff
    )
    if enabled:
        return _RUFF_HOOKS
    commented = "\n".join(
        "# " + line if line and not line.startswith("#") else line
        for line in _RUFF_HOOKS.splitlines()
    )
    return (
        "# ruff was not installed when this file was made: pip install ruff, then uncomment.\n"
        + commented
    )


def _script_location(directory: Path, ini: Path) -> str:
    if directory.is_absolute():
        return directory.as_posix()
    relative = os.path.relpath(directory.resolve(), ini.resolve().parent)
    return "%(here)s/" + Path(relative).as_posix()

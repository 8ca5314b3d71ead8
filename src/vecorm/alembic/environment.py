"""Helpers for env.py: find the project's ``MetaData`` from ``alembic.ini``.

The migrations template reads ``target_metadata = myapp.models:Base`` from the ``[alembic]``
section, so a new project edits one line of configuration instead of Python::

    # alembic.ini
    [alembic]
    script_location = %(here)s/migrations
    target_metadata = myapp.models:Base

    # env.py
    target_metadata = metadata_from_config(context.config)
"""

from __future__ import annotations

import importlib
import sys
from pathlib import Path
from typing import Any

from alembic.config import Config
from sqlalchemy import MetaData

from vecorm.errors import ConfigurationError


def metadata_from_config(config: Config, option: str = "target_metadata") -> MetaData | None:
    """The ``MetaData`` named by ``option`` (``"pkg.module:Base"``), or ``None`` when unset.

    The name may point at a declarative base, a ``MetaData``, or anything with ``.metadata``.
    The directory holding ``alembic.ini`` is put on ``sys.path`` so project modules import.
    """
    target = config.get_main_option(option)
    if not target:
        return None
    if config.config_file_name:
        here = str(Path(config.config_file_name).resolve().parent)
        if here not in sys.path:
            sys.path.insert(0, here)
    return load_metadata(target)


def load_metadata(target: str) -> MetaData:
    """Import ``"pkg.module:Base"`` (or ``:metadata``, ``:Base.metadata``) as a ``MetaData``."""
    module_name, _, attribute = target.strip().partition(":")
    if not module_name or not attribute:
        raise ConfigurationError(f"target_metadata {target!r} must look like 'package.module:Base'")
    try:
        found: Any = importlib.import_module(module_name)
    except ImportError as exc:
        raise ConfigurationError(
            f"cannot import {module_name!r} named by target_metadata: {exc}; run alembic from "
            "the project root or install the project"
        ) from exc
    for part in attribute.split("."):
        try:
            found = getattr(found, part)
        except AttributeError:
            raise ConfigurationError(f"{module_name!r} has no attribute {attribute!r}") from None
    metadata = found if isinstance(found, MetaData) else getattr(found, "metadata", None)
    if not isinstance(metadata, MetaData):
        raise ConfigurationError(
            f"target_metadata {target!r} is neither a MetaData nor a declarative base"
        )
    return metadata

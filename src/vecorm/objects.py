"""Objects named by ``"package.module:attribute"`` paths, as the command line and migrations
name models and embedders."""

from __future__ import annotations

import importlib
from typing import Any

from vecorm.errors import ConfigurationError


def import_object(path: str) -> Any:
    """The object named by ``"package.module:attribute"``.

    >>> import_object("vecorm.schema.config:HNSW").__name__
    'HNSW'
    """
    module_name, _, attribute = path.partition(":")
    if not module_name or not attribute:
        raise ConfigurationError(f"{path!r} must look like 'package.module:name'")
    try:
        target: Any = importlib.import_module(module_name)
    except ImportError as exc:
        raise ConfigurationError(
            f"cannot import {module_name!r} for {path!r}: {exc}; is the project on sys.path?"
        ) from exc
    for part in attribute.split("."):
        try:
            target = getattr(target, part)
        except AttributeError:
            raise ConfigurationError(f"{module_name!r} has no attribute {attribute!r}") from None
    return target


def import_model(path: str) -> type[Any]:
    """The class named by ``"package.module:Class"``.

    >>> import_model("vecorm.schema.config:SearchConfig").__name__
    'SearchConfig'
    """
    target = import_object(path)
    if not isinstance(target, type):
        raise ConfigurationError(f"{path!r} is not a class")
    return target

"""vecorm's comparators as named Alembic plugins, besides Alembic's module-level registry.

``import vecorm.alembic`` in env.py is all vecorm needs: its comparators sit in Alembic's
module-level ``comparators`` registry, which every autogenerate run copies. The same import also
registers them as named plugins (Alembic 1.18+'s ``Plugin`` API), so that an env.py that passes
``autogenerate_plugins`` can leave some or all of them out, or take them from the plugin::

    context.configure(
        ...,
        autogenerate_plugins=["alembic.autogenerate.*", "~vecorm.bm25"],  # all but BM25
    )

===========================  ==================================================================
``vecorm.autogenerate``      the vector extension, indexes and generated columns compared from
                             the catalog, vector widths, renames of adopted indexes
``vecorm.partitions``        partitions of a model's table left alone
``vecorm.bm25``              the BM25 trigger functions and triggers
``vecorm.precision``         a vector index replaced by one of another precision: build, then drop
===========================  ==================================================================

Each comparator runs once per run whichever way it is reached: the module-level copy steps
aside in a run whose ``autogenerate_plugins`` names its plugin, to include it (Alembic then runs
the plugin's copy) or to exclude it (``~vecorm.bm25``; ``~vecorm.*`` for all). A run that names
none of them runs the module-level copies, as before.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from alembic.autogenerate import comparators
from alembic.autogenerate.api import AutogenContext
from alembic.runtime.plugins import Plugin
from alembic.util import DispatchPriority, PriorityDispatchResult

_Comparator = TypeVar("_Comparator", bound=Callable[..., PriorityDispatchResult])

#: The plugins, by name, in the order their modules register comparators.
PLUGIN_NAMES = ("vecorm.autogenerate", "vecorm.partitions", "vecorm.bm25", "vecorm.precision")


@dataclass(frozen=True)
class _Registration:
    function: Callable[..., PriorityDispatchResult]
    target: str
    subgroup: str | None
    priority: DispatchPriority
    qualifier: str


_registrations: dict[str, list[_Registration]] = {name: [] for name in PLUGIN_NAMES}


def comparator(
    plugin: str,
    target: str,
    *,
    subgroup: str | None = None,
    priority: DispatchPriority = DispatchPriority.MEDIUM,
    qualifier: str = "default",
) -> Callable[[_Comparator], _Comparator]:
    """Register an autogenerate comparator in Alembic's module-level registry (unless the run
    names ``plugin``) and in the named plugin ``plugin``, with ``comparators.dispatch_for``'s
    arguments::

        @comparator("vecorm.bm25", "schema", subgroup="vecorm_bm25",
                    priority=DispatchPriority.LAST)
        def compare_bm25(autogen_context, upgrade_ops, schemas): ...
    """
    if plugin not in _registrations:
        raise ValueError(f"unknown vecorm plugin {plugin!r}; one of {', '.join(PLUGIN_NAMES)}")

    def decorate(function: _Comparator) -> _Comparator:
        @functools.wraps(function)
        def unless_named(
            autogen_context: AutogenContext, *args: Any, **kwargs: Any
        ) -> PriorityDispatchResult:
            if named_in_run(autogen_context, plugin):
                return PriorityDispatchResult.CONTINUE
            return function(autogen_context, *args, **kwargs)

        comparators.dispatch_for(target, priority=priority, qualifier=qualifier, subgroup=subgroup)(
            unless_named
        )
        _registrations[plugin].append(
            _Registration(function, target, subgroup, priority, qualifier)
        )
        return function

    return decorate


def _pattern(expression: str) -> re.Pattern[str]:
    """Alembic's reading of a plugin expression: dotted names, ``*`` for one or more parts."""
    parts = [r".+?" if part == "*" else re.escape(part) for part in expression.split(".")]
    return re.compile("^" + r"\.".join(parts) + "$")


def named_in_run(autogen_context: AutogenContext, plugin: str) -> bool:
    """Whether this run's ``autogenerate_plugins`` names ``plugin``, to include or exclude it."""
    context = autogen_context.migration_context
    expressions = None if context is None else context.opts.get("autogenerate_plugins")
    if expressions is None:
        return False
    return any(_pattern(expression.removeprefix("~")).match(plugin) for expression in expressions)


def excluded_in_run(autogen_context: AutogenContext, plugin: str) -> bool:
    """Whether this run's ``autogenerate_plugins`` leaves ``plugin`` out (``~vecorm.bm25``)."""
    context = autogen_context.migration_context
    expressions = None if context is None else context.opts.get("autogenerate_plugins")
    return any(
        _pattern(expression[1:]).match(plugin)
        for expression in expressions or ()
        if expression.startswith("~")
    )


def setup_plugins() -> None:
    """Register the named plugins (once per process; ``import vecorm.alembic`` calls it)."""
    for name, registrations in _registrations.items():
        try:
            plugin = Plugin(name)
        except ValueError:  # already registered by an earlier import of this process
            continue
        for each in registrations:
            plugin.add_autogenerate_comparator(
                each.function,
                each.target,
                each.subgroup,
                qualifier=each.qualifier,
                priority=each.priority,
            )

"""Progress bars that cost nothing when nobody is watching.

A bar is drawn (with tqdm, ``pip install 'vecorm[cli]'``) only when asked for *and* stderr is a
terminal, or when forced; everywhere else (the Python API by default, CI logs, a web request)
it is a silent counter with the same methods::

    with progress_bar(total=1000, desc="backfill Document", enabled=True) as bar:
        bar.update(64)
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, Literal, Protocol

ProgressChoice = bool | Literal["auto", "always"]
"""``False``: never; ``True`` / ``"auto"``: when stderr is a terminal; ``"always"``: forced."""


class Bar(Protocol):
    """What vecorm calls on a bar (a subset of tqdm's)."""

    n: int
    total: int | None

    def update(self, n: int = 1) -> Any: ...

    def reset(self, total: int | None = None) -> Any: ...

    def set_postfix_str(self, s: str = "", refresh: bool = True) -> Any: ...

    def refresh(self) -> Any: ...

    def close(self) -> Any: ...


class SilentBar:
    """Counts like a bar and draws nothing."""

    def __init__(self, total: int | None = None) -> None:
        self.n = 0
        self.total = total

    def update(self, n: int = 1) -> None:
        self.n += n

    def reset(self, total: int | None = None) -> None:
        self.n, self.total = 0, total

    def set_postfix_str(self, s: str = "", refresh: bool = True) -> None:
        """Nothing to show."""

    def refresh(self) -> None:
        """Nothing to draw."""

    def close(self) -> None:
        """Nothing to close."""


def shows(choice: ProgressChoice) -> bool:
    """Whether a bar is drawn for ``choice`` here and now."""
    if choice is False:
        return False
    if choice == "always":
        return True
    return bool(getattr(sys.stderr, "isatty", lambda: False)())


def new_bar(*, total: int | None, desc: str, unit: str = "rows", enabled: ProgressChoice) -> Bar:
    """A tqdm bar when :func:`shows` says so and tqdm is installed, else a :class:`SilentBar`."""
    if shows(enabled):
        try:
            from tqdm import tqdm
        except ImportError:
            pass
        else:
            bar: Bar = tqdm(total=total, desc=desc, unit=unit, dynamic_ncols=True)
            return bar
    return SilentBar(total)


@contextmanager
def progress_bar(
    *, total: int | None, desc: str, unit: str = "rows", enabled: ProgressChoice
) -> Iterator[Bar]:
    """:func:`new_bar` as a context manager that closes it."""
    bar = new_bar(total=total, desc=desc, unit=unit, enabled=enabled)
    try:
        yield bar
    finally:
        bar.close()

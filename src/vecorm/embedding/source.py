"""What text a row embeds, and the digest that tells whether its embedding is current.

The text is the configured fields joined by newlines, skipping NULL and blank values; a row
with no text gets no embedding. The digest is SHA-256 of that text; the embedding is current
when the stored digest and model name equal the row's present ones::

    source_text(doc, ("title", "content"))   # 'Intro\\nPostgreSQL stores vectors.'
    text_digest("Intro\\nPostgreSQL stores vectors.")  # 32 bytes
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence


def source_text(instance: object, fields: Sequence[str]) -> str | None:
    """The text ``instance`` embeds, or ``None`` when every field is NULL or blank."""
    return join_text(getattr(instance, name, None) for name in fields)


def join_text(values: Iterable[object]) -> str | None:
    """The text of the fields' ``values`` in order (``None`` when all are NULL or blank).

    >>> join_text(["Intro", None, "  ", 42])
    'Intro\\n42'
    """
    parts = []
    for value in values:
        if value is None:
            continue
        text = str(value)
        if text.strip():
            parts.append(text)
    return "\n".join(parts) if parts else None


def text_digest(text: str) -> bytes:
    """SHA-256 of ``text`` encoded as UTF-8."""
    return hashlib.sha256(text.encode("utf-8")).digest()

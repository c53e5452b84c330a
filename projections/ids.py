"""Ids as people type them: whole or a prefix, with or without dashes.

Run ids, quarantine ids and effect keys are UUIDs, stored with dashes. A
person pastes one from a log without its dashes, or types its first few
characters; either way it names the same id.
"""

from __future__ import annotations

__all__ = ["MIN_PREFIX", "id_prefix"]

# Fewer characters than this match too many ids to be useful.
MIN_PREFIX = 4

# Where a UUID's dashes go, counted in hex digits.
_CUTS = (8, 12, 16, 20)


def id_prefix(ref: str) -> str:
    """The stored spelling of an id or id prefix, for `LIKE prefix || '%'`.

    Raises ValueError saying what is wrong, to follow "the id": it "is hex
    (0-9, a-f)", or it "needs at least 4 of its characters".
    """
    bare = ref.strip().lower().replace("-", "")
    if not bare or not all(c in "0123456789abcdef" for c in bare):
        raise ValueError("is hex (0-9, a-f)")
    if len(bare) < MIN_PREFIX:
        raise ValueError(f"needs at least {MIN_PREFIX} of its characters")
    spelled = "-".join(
        bare[start:end]
        for start, end in zip((0, *_CUTS), (*_CUTS, 32), strict=True)
        if bare[start:end]
    )

    # A prefix that ends where a dash goes: the dash follows.
    if len(bare) in _CUTS:
        spelled += "-"
    return spelled

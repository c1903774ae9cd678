"""Conditional changes: which versions an ``If-Match`` accepts (transport neutral)."""

from __future__ import annotations

from dataclasses import dataclass

from common_operations.domain.errors import PreconditionFailed


@dataclass(frozen=True, slots=True)
class VersionCondition:
    """The versions a conditional change may apply to.

    ``any_existing`` is ``If-Match: *``: any current version, as long as the resource exists.
    """

    versions: frozenset[int] = frozenset()
    any_existing: bool = False

    def check(self, current: int | None, *, what: str) -> None:
        """Raise unless the resource's ``current`` version (None: it does not exist) is accepted.

        Raises:
            PreconditionFailed: the condition does not hold; nothing was changed.
        """
        if current is not None and (self.any_existing or current in self.versions):
            return
        shown = "does not exist" if current is None else f"is at version {current}"
        raise PreconditionFailed(
            f"{what} {shown}; If-Match does not match (read it again and retry)",
            currentVersion=current,
        )


def parse_if_match(header: str | None) -> VersionCondition | None:
    """An ``If-Match`` header's condition; None when the header is absent or blank (unconditional).

    Entity tags are the decimal version, quoted (``"7"``); a bare ``7`` and a weak ``W/"7"`` are
    accepted too. An entry that is not a version matches nothing, so it ends in 412 (RFC 9110:
    a precondition that names no current tag fails) rather than in a 400.
    """
    if header is None or not header.strip():
        return None
    versions: set[int] = set()
    for raw in header.split(","):
        tag = raw.strip()
        if tag == "*":
            return VersionCondition(any_existing=True)
        tag = tag.removeprefix("W/").strip('"')
        if tag.isascii() and tag.isdigit() and len(tag) <= 19:
            versions.add(int(tag))
    return VersionCondition(frozenset(versions))


def etag(version: int) -> str:
    """The ``ETag`` header value of a version."""
    return f'"{version}"'

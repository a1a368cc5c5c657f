"""Which database a keeper's runs and outcomes belong to: that of the scheduler that
launched them.  A scheduler of another database finds none of them there; taking them
over, it would stop the runs as fenced and acknowledge the outcomes as recorded, and the
first database would then record them `lost` (review finding: a start with another --db
after a crash).  So a scheduler's hello is refused while the keeper holds runs or
outcomes of another database (conns._hello).

The tag outlives the keeper in keeper.json (`dbKey`, `dbShown`), for the outcomes a
keeper that died leaves in its journal: the next keeper inherits the tag with them.
`dbShown` is the URL without its password, as the scheduler shows it (for the refusal's
message); `dbKey` is a hash of that: a password rotated between a crash and the next
start is the same database (review finding: the whole URL was hashed, and the refusal
named the same database twice).  The same database spelled two ways (postgresql:// and
postgresql+psycopg://, localhost and 127.0.0.1) counts as two: the refusal says to
start on the one it names.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

from pony_scheduler.lifecycle.pidfile import write_meta


def key_of(shown: str) -> str:
    """A database's tag: 16 hex digits of the SHA-256 of its URL without its password."""
    return hashlib.sha256(shown.encode("utf-8", "surrogateescape")).hexdigest()[:16]


class DatabaseTag:
    """The tag of a keeper's runs and outcomes, kept in keeper.json with its meta."""

    def __init__(self, meta_path: Path, meta: dict[str, Any], inherited: dict[str, Any] | None):
        """`meta`: what keeper.json holds; `inherited`: the previous keeper's keeper.json
        when its journal left outcomes to this keeper, else None."""
        self.meta_path, self.meta = meta_path, meta
        self.key: str | None = None
        self.shown = ""
        old = inherited or {}
        if isinstance(old.get("dbKey"), str):
            self.key, self.shown = old["dbKey"], str(old.get("dbShown") or "")
            self._save()

    def conflicts(self, shown: str) -> bool:
        """Whether `shown` (a scheduler's database URL without its password) is not the
        database of this tag."""
        return self.key is not None and key_of(shown) != self.key

    def adopt(self, shown: str) -> None:
        """A scheduler of database `shown` is this keeper's now."""
        if key_of(shown) != self.key:
            self.key, self.shown = key_of(shown), shown
            self._save()

    def _save(self) -> None:
        self.meta.update(dbKey=self.key, dbShown=self.shown)
        write_meta(self.meta_path, self.meta)

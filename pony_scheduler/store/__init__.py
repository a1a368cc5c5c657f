"""The only package that speaks SQL.  Everything else uses `Store`."""

from pony_scheduler.store.store import Store

__all__ = ["Store"]

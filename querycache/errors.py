"""Exceptions querycache raises on purpose (all are ``ValueError``/``TypeError``)."""

from __future__ import annotations

__all__ = ["OptionError"]


class OptionError(ValueError):
    """An execution option meant for querycache has a wrong name or value."""

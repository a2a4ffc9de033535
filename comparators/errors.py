"""Errors a caller handles differently: both are configuration mistakes found at startup."""

from __future__ import annotations


class UnknownComparatorError(ValueError):
    """The configuration names a comparator nobody registered."""


class InvalidComparatorOptionsError(ValueError):
    """A comparator's options do not validate; one line per bad option."""

"""Errors the correlator raises on malformed input (the caller counts and skips the event)."""

from __future__ import annotations


class EventError(ValueError):
    """An event that cannot be correlated: a required header is missing or malformed."""

"""
Results that are ready now or later: a clustered registry or store answers
with a Deferred where the in-process ones answer at once, and the handlers
are written once for both with :func:`then`.
"""

from __future__ import annotations

from typing import Any, Callable

from twisted.internet.defer import Deferred

__all__ = ["is_deferred", "then"]


def is_deferred(result: Any) -> bool:
    """
    Whether ``result`` is a Deferred. (``isinstance`` alone goes through
    the slow abstract-class check, Deferred being an ``Awaitable``, for
    every plain result on the hot path.)
    """
    return result is not None and (type(result) is Deferred or isinstance(result, Deferred))


def then(result: Any, callback: Callable[..., Any], *args: Any) -> Any:
    """
    ``callback(result, *args)`` now, or once ``result`` (a Deferred) fires.

    Returns what the callback returns, or a Deferred of it: synchronous
    results stay synchronous, so the in-process path allocates no Deferred.
    """
    if is_deferred(result):
        return result.addCallback(callback, *args)
    return callback(result, *args)

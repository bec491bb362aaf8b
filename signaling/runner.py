"""
Run a built service in the foreground until a signal stops it: the part of
``python -m signaling`` shared by the single server, the ``--workers``
supervisor and each worker process.
"""

from __future__ import annotations

import sys
from typing import Any, Callable

__all__ = ["run_service"]


def run_service(service: Any, reactor: Any, before_exit: Callable[[], Any] | None = None) -> int:
    """
    Start ``service`` (binding its ports first), install the signal handlers
    (SIGHUP reload, graceful SIGTERM/SIGINT, a second one exits at once after
    ``before_exit``), run the reactor; the exit status.

    Status 1 when the service cannot start (the reason goes to stderr as
    ``signaling: cannot start: ...``); otherwise ``service.exit_status`` if
    it has one (the supervisor's), else 0.
    """
    from .service import freeze_startup_objects, install_signal_handlers

    try:
        service.privilegedStartService()
        service.startService()
    except Exception as e:
        print(f"signaling: cannot start: {e}", file=sys.stderr)
        return 1
    install_signal_handlers(reactor, service, before_exit)
    freeze_startup_objects()
    reactor.addSystemEventTrigger("before", "shutdown", service.stopService)
    reactor.run()
    return getattr(service, "exit_status", 0)

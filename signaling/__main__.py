"""
``python -m signaling [options]``: the same server as ``twistd -n signaling``
without twistd (logs to stdout, stops on SIGTERM/SIGINT).
"""

from __future__ import annotations

import sys

from twisted.logger import globalLogBeginner, textFileLogObserver
from twisted.python import usage

from .tap import Options


def main(argv: list[str] | None = None) -> int:
    """Parse options, run the server until a signal stops it; the exit status."""
    options = Options()
    try:
        options.parseOptions(sys.argv[1:] if argv is None else argv)
    except usage.UsageError as e:
        print(f"{options}\nsignaling: error: {e}", file=sys.stderr)
        return 2

    from twisted.internet import reactor

    from .service import make_service, install_signal_handlers

    globalLogBeginner.beginLoggingTo([textFileLogObserver(sys.stdout)], redirectStandardIO=False)
    try:
        service = make_service(options.config, reactor)
        service.privilegedStartService()
        service.startService()
    except Exception as e:
        print(f"signaling: cannot start: {e}", file=sys.stderr)
        return 1
    install_signal_handlers(reactor, service)
    reactor.addSystemEventTrigger("before", "shutdown", service.stopService)
    reactor.run()
    return 0


if __name__ == "__main__":
    sys.exit(main())

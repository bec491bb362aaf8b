"""
``python -m signaling [options]``: the same server as ``twistd -n signaling``
without twistd (logs to stdout, stops on SIGTERM/SIGINT); with
``--workers N`` the supervisor of N worker processes.
"""

from __future__ import annotations

import sys

from twisted.logger import globalLogBeginner
from twisted.python import usage

from .logs import json_observer, text_observer
from .tap import Options

#: ``--log-format`` value -> observer factory taking the output stream.
LOG_FORMATS = {"text": text_observer, "json": json_observer}


class MainOptions(Options):
    """The options of ``twistd signaling`` plus ``--log-format``."""

    optParameters = [
        ["log-format", None, "text", "Log lines on stdout: text (readable) or json (one object a line)."],
    ]

    def postOptions(self) -> None:
        if self["log-format"] not in LOG_FORMATS:
            raise usage.UsageError(
                f"--log-format: expected text or json, not {self['log-format']!r}"
            )
        super().postOptions()


def main(argv: list[str] | None = None) -> int:
    """Parse options, run the server until a signal stops it; the exit status."""
    options = MainOptions()
    try:
        options.parseOptions(sys.argv[1:] if argv is None else argv)
    except usage.UsageError as e:
        print(f"{options}\nsignaling: error: {e}", file=sys.stderr)
        return 2

    from twisted.internet import reactor

    from .runner import run_service
    from .service import make_service
    from .workers import Supervisor

    observer = LOG_FORMATS[options["log-format"]](sys.stdout)
    globalLogBeginner.beginLoggingTo([observer], redirectStandardIO=False)
    config = options.config
    if config.workers > 1:
        supervisor = Supervisor(config, reactor)
        return run_service(supervisor, reactor, supervisor.kill_workers)
    try:
        service = make_service(config, reactor)
    except Exception as e:
        print(f"signaling: cannot start: {e}", file=sys.stderr)
        return 1
    return run_service(service, reactor)


if __name__ == "__main__":
    sys.exit(main())

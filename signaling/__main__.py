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
from .tap import ENVIRONMENT, Options, log_warnings, usage_error_text

#: ``--log-format`` value -> observer factory taking the output stream.
LOG_FORMATS = {"text": text_observer, "json": json_observer}


class MainOptions(Options):
    """The options of ``twistd signaling`` plus ``--log-format``."""

    synopsis = "Usage: python -m signaling [options]"
    command = "python -m signaling"
    environment = ENVIRONMENT | {"SIGNALING_LOG_FORMAT"}
    optParameters = [
        ["log-format", None, None,
         "Log lines on stdout: text (readable) or json (one object a line). [default: text]"],
    ]

    def postOptions(self) -> None:
        if self["log-format"] is None:
            self["log-format"] = self._environ.get("SIGNALING_LOG_FORMAT", "text")
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
        print(usage_error_text(e, options.command), file=sys.stderr)
        return 2

    from twisted.internet import reactor

    from .runner import run_service
    from .service import make_service
    from .workers import Supervisor

    observer = LOG_FORMATS[options["log-format"]](sys.stdout)
    globalLogBeginner.beginLoggingTo([observer], redirectStandardIO=False)
    log_warnings(options)
    config = options.config
    if config.workers > 1:
        supervisor = Supervisor(config, reactor)
        return run_service(supervisor, reactor, supervisor.kill_workers)
    try:
        service = make_service(config, reactor, policies=options.policies)
    except Exception as e:
        print(f"signaling: cannot start: {e}", file=sys.stderr)
        return 1
    return run_service(service, reactor)


if __name__ == "__main__":
    sys.exit(main())

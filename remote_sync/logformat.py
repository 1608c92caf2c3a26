"""The log lines the commands print on stderr, made safe for a terminal.

What it owns: :class:`ShowableFormatter`, the formatter of ``-v``'s and every warning's log
line (:func:`remote_sync.cli.common.setup_logging`). Apart from :mod:`remote_sync.errors`,
which the client of the agent loads without logging (3 ms of its start-up).
"""

from __future__ import annotations

import logging

from .errors import showable


class ShowableFormatter(logging.Formatter):
    """A log formatter whose lines are :func:`showable`: a log line may name what a host
    holds (a recovery note names a mirrored file, the agent logs each error of its rounds),
    and the log goes to the user's terminal, where an escape sequence in a file name would
    drive it (OSC 52 writes the clipboard). The message is kept on its line, its line
    breaks and tabs escaped too: a name holding a newline would otherwise start a line of
    its own, which could pass for another record (``WARNING ...: all synced``). Only a
    traceback or stack the record appends keeps its newlines and tabs."""

    def formatMessage(self, record: logging.LogRecord) -> str:
        # format() has just set record.message; it is put back as logged, for whatever reads
        # the record after this handler without formatting it (another formatter sets its own).
        message = record.message
        record.message = showable(message)
        try:
            return super().formatMessage(record)
        finally:
            record.message = message

    def format(self, record: logging.LogRecord) -> str:
        return showable(super().format(record), lines=True)

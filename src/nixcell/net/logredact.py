"""Log records of the proxy never carry a real credential, whatever an exception said.

The proxy is shared by every cell of a process and logs connection failures with tracebacks;
an exception message may quote bytes from the wire (a header h11 refused, an upstream's reply).
A filter on the network loggers passes each record's message and traceback through the
redactor of every live cell's credentials (net/spellings.py: every spelling) before any
handler formats it.
"""

from __future__ import annotations

import logging
import traceback
import weakref

LOGGERS = ("nixcell.net.proxy", "nixcell.net.forward", "nixcell.net.session")
_live: weakref.WeakSet = weakref.WeakSet()  # CellCredentials of running cells


class _Redact(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        cells = list(_live)
        if not cells:
            return True

        def clean(text: str) -> str:
            for creds in cells:
                text = creds.redact(text)
            return text

        record.msg, record.args = clean(record.getMessage()), None
        if record.exc_info and not record.exc_text:
            record.exc_text = "".join(traceback.format_exception(*record.exc_info)).rstrip("\n")
        if record.exc_text:
            record.exc_text = clean(record.exc_text)
        if record.stack_info:
            record.stack_info = clean(record.stack_info)
        return True


_FILTER = _Redact()


def watch(creds: object) -> None:
    """Redact ``creds``' secrets from the network logs for as long as it is alive."""
    _live.add(creds)
    for name in LOGGERS:
        logger = logging.getLogger(name)
        if _FILTER not in logger.filters:
            logger.addFilter(_FILTER)

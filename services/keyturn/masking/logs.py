"""Every log line a service writes passes the masker first, exception text included.

One hook for every logger of the process (Keyturn's, uvicorn's, faust's, the libraries'): the
log record factory. A record is made only once its level is enabled, and before any handler
or formatter sees it, so no handler configuration (faust and uvicorn each install their own)
can go around it. The message is rendered with its arguments, the traceback is rendered too,
and both are masked; the record then carries only the masked text.

Validation errors print the input they refused (``input_value=…``); that part is withheld
before masking, because a value cut short by the validator's repr may no longer be
recognisable as what it was.

This is the second line of defence: code does not log request bodies or parameters at all.
"""

from __future__ import annotations

import logging
import re
import sys
import threading
import traceback
from collections.abc import Callable
from typing import Any

from keyturn.masking.protect import mask_text

# pydantic's text (``input_value=…, input_type=``) and the validation error lists web frameworks
# print (``{'type': …, 'loc': …, 'msg': …, 'input': …}``, one error a line, ``input`` last but ``ctx``)
_INPUTS = (
    (re.compile(r"input_value=.*?(?=, input_type=)", re.DOTALL), "input_value=<withheld>"),
    (re.compile(r"'input': .*$", re.MULTILINE), "'input': <withheld>}"),
)
_WITHHELD = "(withheld: logged while masking another line)"
_busy = threading.local()


def masked_log_text(text: str) -> str:
    """A log line or a traceback, safe to write down."""
    for pattern, replacement in _INPUTS:
        text = pattern.sub(replacement, text)
    return mask_text(text)


def _masked_argument(value: Any) -> Any:
    """Numbers stay numbers (``%d`` formats them); anything else becomes masked text."""
    if value is None or isinstance(value, (bool, int, float)):
        return value
    return masked_log_text(value if isinstance(value, str) else str(value))


def mask_record(record: logging.LogRecord) -> logging.LogRecord:
    """Replace the record's message, arguments, traceback and stack with masked text."""
    if getattr(_busy, "masking", False):  # a line logged by the masker itself while it masks
        record.msg, record.args, record.exc_info, record.exc_text, record.stack_info = _WITHHELD, None, None, None, None
        return record
    _busy.masking = True
    try:
        # The format string is the program's; the arguments are data. Each argument is masked
        # on its own, so formatters that read ``args`` (an access log's fields) still can.
        if record.args:
            if isinstance(record.args, dict):
                record.args = {key: _masked_argument(value) for key, value in record.args.items()}
            else:
                record.args = tuple(_masked_argument(value) for value in record.args)
            if not isinstance(record.msg, str):
                record.msg = masked_log_text(str(record.msg))
        else:
            record.msg = masked_log_text(str(record.msg))
        extra = []
        if record.exc_info and record.exc_info[0] is not None:
            extra.append("".join(traceback.format_exception(*record.exc_info)).rstrip("\n"))
        elif record.exc_text:
            extra.append(record.exc_text)
        if record.stack_info:
            extra.append(record.stack_info)
        # the traceback goes where formatters put it (exc_text), already masked
        record.exc_info, record.stack_info = None, None
        record.exc_text = masked_log_text("\n".join(extra)) if extra else None
    finally:
        _busy.masking = False
    return record


def install_log_masking() -> None:
    """Mask every log record of this process from now on, and uncaught exceptions' tracebacks."""
    previous = logging.getLogRecordFactory()
    if getattr(previous, "keyturn_masking", False):
        return
    mask_text("warm up")  # builds the masker now, so the lines it logs while starting are not withheld

    def masked_factory(*args: Any, **kwargs: Any) -> logging.LogRecord:
        return mask_record(previous(*args, **kwargs))

    masked_factory.keyturn_masking = True  # type: ignore[attr-defined]
    logging.setLogRecordFactory(masked_factory)
    # a handler that fails prints the exception being handled, unmasked, to stderr: never
    logging.raiseExceptions = False
    sys.excepthook = _masked_excepthook(sys.excepthook)
    logging.captureWarnings(True)


def _masked_excepthook(previous: Callable[..., Any]) -> Callable[..., Any]:
    def hook(kind: type[BaseException], value: BaseException, tb: Any) -> None:
        sys.stderr.write(masked_log_text("".join(traceback.format_exception(kind, value, tb))) + "\n")

    hook.previous = previous  # type: ignore[attr-defined]
    return hook

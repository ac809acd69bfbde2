"""Keep credentials out of log lines.

Two layers, because either alone can miss something:

* patterns — the userinfo of any URL (``redis://:PW@host`` -> ``redis://***@host``), credential
  query parameters (``p=``, ``u=``, ``password=``, ``token=`` ...) and ``Authorization`` header
  values are masked wherever they appear;
* known values — every secret of the loaded settings (:func:`soundwatch.settings.load_settings`
  registers them) and derived forms (URL-encoded, base64, the Basic-auth token the InfluxDB client
  builds) are masked verbatim, so a library that echoes a password in its own words is caught too.

:func:`install` (called by the CLI root) applies both to every log record *when it is created*,
through the record factory rather than a handler filter: a filter on a handler is lost when a
library replaces the handlers (Faust sets up its own logging), and a filter on a logger does not
see records propagated from child loggers. The rendered message and any traceback text are
masked; exceptions themselves must still never be built with a secret in them.
"""

from __future__ import annotations

import base64
import logging
import re
import threading
from urllib.parse import quote, quote_plus

MASK = "***"
# Shorter values are too likely to be ordinary words ("wrong", "token") to mask everywhere; a short
# secret is still masked wherever the patterns find it (URL, parameter, header).
_MIN_SECRET_LEN = 8

_URL_USERINFO = re.compile(r"(?P<scheme>\b[A-Za-z][A-Za-z0-9+.\-]*://)[^\s/@?#'\"]+@")
_CREDENTIAL_PARAM = re.compile(
    r"(?i)(?P<key>[?&;](?:p|u|password|passwd|pwd|token|access_token|auth|api_key|apikey|secret)=)[^&\s'\"#,;)]+"
)
_AUTH_HEADER = re.compile(r"(?i)(?P<key>authorization['\"]?\s*[:=]\s*['\"]?(?:basic|token|bearer)\s+)[^\s'\",;}]+")

_lock = threading.Lock()
_known: set[str] = set()
_installed = False


def register_secret(value: str | None) -> None:
    """Mask ``value`` (and its URL-encoded and base64 forms) in every log line from now on."""
    if not value or len(value) < _MIN_SECRET_LEN:
        return
    forms = {value, quote(value, safe=""), quote_plus(value), base64.b64encode(value.encode()).decode()}
    with _lock:
        _known.update(f for f in forms if len(f) >= _MIN_SECRET_LEN)


def register_basic_auth(username: str, password: str) -> None:
    """Mask the ``Authorization: Basic`` token of ``username:password`` (and the password itself)."""
    register_secret(password)
    register_secret(base64.b64encode(f"{username}:{password}".encode()).decode())


def redact(text: str) -> str:
    """``text`` with URL credentials, credential parameters, auth headers and known secrets masked."""
    text = _URL_USERINFO.sub(rf"\g<scheme>{MASK}@", text)
    text = _CREDENTIAL_PARAM.sub(rf"\g<key>{MASK}", text)
    text = _AUTH_HEADER.sub(rf"\g<key>{MASK}", text)
    with _lock:
        known = sorted(_known, key=len, reverse=True)  # longest first: a form may contain another
    for secret in known:
        if secret in text:
            text = text.replace(secret, MASK)
    return text


def install() -> None:
    """Redact every log record created from now on in this process (idempotent)."""
    global _installed
    with _lock:
        if _installed:
            return
        _installed = True
    make_record = logging.getLogRecordFactory()

    def redacting_record(*args: object, **kwargs: object) -> logging.LogRecord:
        record = make_record(*args, **kwargs)
        try:
            message = record.getMessage()
        except Exception:  # a bad format string: let the handler report it as it normally would
            return record
        record.msg, record.args = redact(message), None
        if record.exc_info and not record.exc_text:
            record.exc_text = redact(logging.Formatter().formatException(record.exc_info))
        if record.stack_info:
            record.stack_info = redact(record.stack_info)
        return record

    logging.setLogRecordFactory(redacting_record)

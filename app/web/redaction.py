"""Secrets kept out of the request logs: the set-up link's token, passwords, CSRF tokens."""

import logging
import re


class RedactSecrets(logging.Filter):
    """Blank tokens and passwords out of logged request lines (e.g. /setup?token=...)."""

    PATTERN = re.compile(r"((?:token|password|csrf_token)=)[^&\s\"']+", re.I)

    def filter(self, record):
        """Rewrite the record's message and string arguments; always keep the record."""
        if isinstance(record.msg, str):
            record.msg = self.PATTERN.sub(r"\1[redacted]", record.msg)
        if isinstance(record.args, tuple):
            record.args = tuple(self._clean(a) for a in record.args)
        elif isinstance(record.args, dict):  # gunicorn's access log passes its atoms so
            record.args = {k: self._clean(v) for k, v in record.args.items()}
        return True

    def _clean(self, value):
        return self.PATTERN.sub(r"\1[redacted]", value) if isinstance(value, str) else value


def install_log_redaction():
    """Attach the secret-redacting filter to the request loggers (once)."""
    for name in ("werkzeug", "gunicorn.access"):
        logger = logging.getLogger(name)
        if not any(isinstance(f, RedactSecrets) for f in logger.filters):
            logger.addFilter(RedactSecrets())

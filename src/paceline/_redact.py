"""Keeping secrets out of every text paceline prints: one process-wide memory of them.

Every key pool a job file made is remembered (its secrets, and how each is shown masked),
so an error from anywhere (a job file that fails to load, a sink, a fatal error, the
CLI's last line) can be cleaned before it is shown. A job file that fails before its pool
exists may still quote a key from the environment: values of variables named like
secrets (``*KEY*``, ``*TOKEN*``, ``*SECRET*``, ``*PASSWORD*``) are cleaned as well.
"""

from __future__ import annotations

import os
import re
import urllib.parse
from collections.abc import Iterable

__all__ = ["redact", "remember"]

_KNOWN: dict[str, str] = {}  # secret -> how it is shown
_SECRET_NAME = re.compile(r"KEY|TOKEN|SECRET|PASSW|CREDENTIAL|AUTH", re.IGNORECASE)
_MIN_LENGTH = 8  # shorter values are too likely to be ordinary words


def remember(pairs: Iterable[tuple[str, str]]) -> None:
    """Remember (secret, masked form) pairs, e.g. a key pool's keys."""
    for secret, masked in pairs:
        if secret:
            _KNOWN[secret] = masked


def _environment() -> dict[str, str]:
    found = {}
    for name, value in os.environ.items():
        value = value.strip()
        if _SECRET_NAME.search(name) and len(value) >= _MIN_LENGTH:
            for part in value.split(","):  # PREFIX=key1,key2
                part = part.strip()
                if len(part) >= _MIN_LENGTH:
                    found[part] = "…" + part[-4:] if len(part) >= 16 else "…***"
    return found


def redact(text: str) -> str:
    """``text`` with every remembered secret, and secret-looking environment values,
    replaced by their masked forms (also when URL-quoted)."""
    known = {**_environment(), **_KNOWN}
    for secret in sorted(known, key=len, reverse=True):
        masked = known[secret]
        for form in {secret, urllib.parse.quote(secret, safe=""), urllib.parse.quote_plus(secret)}:
            if form in text:
                text = text.replace(form, masked)
    return text

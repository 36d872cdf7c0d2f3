"""Every secret the process holds, kept out of whatever is cut, stored or printed.

The secrets are read from the environment when needed: API keys, tokens and passwords (variables
named *_KEY, *_TOKEN, *_SECRET, *_PASSWORD) and the credentials inside any URL variable
(`https://user:token@host`). `redact` replaces each with `$VARIABLE`; `clip` redacts *before* it
cuts, so a cut can never fall inside a key and let half of it through."""

from __future__ import annotations

import os
import re
from urllib.parse import unquote, urlsplit

from factory.errors import FactoryError

SECRET_SUFFIXES = ("_KEY", "_TOKEN", "_SECRET", "_PASSWORD")
MIN_SECRET = 8  # shorter values are placeholders ("x", "test"); replacing them everywhere would garble text
_URL = re.compile(r"^[a-z][a-z0-9+.-]*://", re.IGNORECASE)


def secrets() -> list[tuple[str, str]]:
    """(secret, placeholder) pairs, longest secret first (so a key containing another is replaced whole)."""
    found: dict[str, str] = {}
    for var, value in os.environ.items():
        value = value.strip()
        if var.upper().endswith(SECRET_SUFFIXES):
            found.setdefault(value, f"${var}")
        if _URL.match(value):
            for part in url_credentials(value):
                found.setdefault(part, f"${var}:credentials")
    return sorted(((s, p) for s, p in found.items() if len(s) >= MIN_SECRET), key=lambda sp: -len(sp[0]))


def url_credentials(url: str) -> list[str]:
    """The user:password part of a URL, whole and each half (raw and percent-decoded)."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return []
    userinfo = parts.netloc.rpartition("@")[0] if "@" in parts.netloc else ""
    if not userinfo:
        return []
    out = [userinfo, *userinfo.split(":", 1)]
    return [p for p in dict.fromkeys(out + [unquote(p) for p in out]) if p]


def redact(text: str, extra: tuple[tuple[str, str], ...] = ()) -> str:
    """`text` with every secret the process holds (and `extra` (secret, placeholder) pairs) replaced."""
    for secret, placeholder in (*extra, *secrets()):
        if len(secret) >= MIN_SECRET and secret in text:
            text = text.replace(secret, placeholder)
    return text


def clip(text: str, limit: int = 300) -> str:
    """Redact, then cut to `limit` characters: the only safe order."""
    text = redact(text)
    return text if len(text) <= limit else text[:limit] + "..."


def checked_base_url(var: str, url: str) -> str:
    """A base URL from the environment, refused clearly (exit 2) when it cannot work: no http(s)
    scheme or host, or credentials in it (`user:token@`): the key travels in its own header, and
    aiohttp cannot send both."""
    shown = redact(url, tuple((c, "***") for c in url_credentials(url)))
    try:
        parts = urlsplit(url.strip())
        parts.port  # noqa: B018 - raises ValueError on a bad port
    except ValueError as e:
        raise FactoryError(f"{var} is not a valid URL ({redact(str(e))}): {shown}") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise FactoryError(f"{var} must be an http(s) URL such as https://api.example.com/v1, got {shown!r}")
    if parts.username is not None or parts.password is not None:
        raise FactoryError(f"{var} carries credentials (user:token@host), which cannot be sent together with the "
                           "API key's header. Put the key in its own variable (e.g. OPENAI_API_KEY) and remove "
                           f"the credentials from the URL: {shown}")
    return url.strip()


def redact_key(message: str, key: str, placeholder: str) -> str:
    """Some servers echo the key back in errors; keep it, and every other secret the process holds,
    out of logs. Keys under 8 chars are placeholders."""
    return redact(message, ((key, placeholder),))

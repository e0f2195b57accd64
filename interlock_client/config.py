"""Where the server is and which token to present: arguments, else the environment."""

from __future__ import annotations

import os

DEFAULT_URL = "http://127.0.0.1:8080"
URL_VARIABLE = "INTERLOCK_URL"
TOKEN_VARIABLE = "INTERLOCK_CLIENT_TOKEN"
DEFAULT_TIMEOUT_S = 30.0
USER_AGENT = "interlock-client/0.1"


def base_url(url: str | None) -> str:
    """`url`, else INTERLOCK_URL, else http://127.0.0.1:8080; without a trailing slash."""
    chosen = url or os.environ.get(URL_VARIABLE) or DEFAULT_URL
    if "://" not in chosen:
        chosen = "http://" + chosen
    return chosen.rstrip("/")


def client_token(token: str | None) -> str | None:
    """`token`, else INTERLOCK_CLIENT_TOKEN (None: no X-Client-Token header; the server
    answers 401)."""
    return token or os.environ.get(TOKEN_VARIABLE) or None


def headers(token: str | None) -> dict[str, str]:
    found = {"Accept": "application/json", "User-Agent": USER_AGENT}
    if token is not None:
        found["X-Client-Token"] = token
    return found

"""Who may reach the server: the bind rule and bearer authentication.

A reward model server on a laptop must not become an open service on the café's network
by a typo, so anything but a loopback address needs an API key, checked before the socket
is bound. The key is compared in constant time (``hmac.compare_digest``) and never
logged, printed or echoed in an error.
"""

from __future__ import annotations

import hmac
import ipaddress
import os

from engine.errors import InputError

#: host names that always mean this machine (``localhost`` resolves to loopback by RFC 6761)
_LOOPBACK_NAMES = frozenset({"localhost", "localhost.localdomain", "ip6-localhost", "ip6-loopback"})


def is_loopback(host: str) -> bool:
    """True for 127.0.0.0/8, ::1 and the loopback names; False for everything else, 0.0.0.0 included."""
    name = host.strip().strip("[]").lower()
    if name in _LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:  # any other host name might resolve to a public interface
        return False


def check_bind(host: str, api_key: str | None) -> None:
    """Refuse a non-loopback address without an API key (before anything is bound)."""
    if api_key is None and not is_loopback(host):
        raise InputError(
            f"refusing to listen on {host}: it is not a loopback address, and without an API key "
            "anyone who can reach it could use the server. Put a key in an environment variable "
            "and name it with --api-key-env VAR (clients send 'Authorization: Bearer <key>'), "
            "or keep the default --host 127.0.0.1", field="--host")


def read_api_key(env_var: str | None) -> str | None:
    """The key held by ``env_var`` (None when no variable was named); unset or blank is an error."""
    if env_var is None:
        return None
    value = os.environ.get(env_var)
    if value is None or not value.strip():
        raise InputError(f"the environment variable {env_var} is {'empty' if value is not None else 'not set'}; "
                         "put the API key in it (e.g. `export "
                         f"{env_var}=$(openssl rand -hex 32)`)", field="--api-key-env")
    return value.strip()


def bearer_ok(authorization: str | None, api_key: str) -> bool:
    """Whether an ``Authorization`` header carries the key, compared in constant time.

    The scheme is case-insensitive (RFC 7235); the comparison runs over bytes whatever was
    sent, so neither a wrong scheme nor a wrong key returns measurably sooner.
    """
    scheme, _, token = (authorization or "").partition(" ")
    good_scheme = scheme.lower() == "bearer"
    token_ok = hmac.compare_digest(token.strip().encode("utf-8", "replace"), api_key.encode("utf-8"))
    return good_scheme and token_ok

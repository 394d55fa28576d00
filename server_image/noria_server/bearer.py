"""The optional feedback token: ``Authorization: Bearer <token>`` checked in constant time.

The token comes from the environment (``NORIA_FEEDBACK_TOKEN``, which the operator fills from the
Secret named in ``spec.feedback.tokenSecretRef`` through ``valueFrom.secretKeyRef``), never from a
flag: a process's arguments are readable by anyone on the node through ``/proc``. It is never
logged. Both sides are hashed before the comparison, so neither the content nor the length of the
token leaks through timing.
"""

from __future__ import annotations

import hashlib
import hmac
from typing import Final

TOKEN_ENV: Final = "NORIA_FEEDBACK_TOKEN"
MIN_TOKEN_LENGTH: Final = 16
CHALLENGE: Final = (b"www-authenticate", b'Bearer realm="noria-feedback"')


class BearerToken:
    """A configured token; ``matches`` takes the request's ``Authorization`` header value."""

    __slots__ = ("_digest",)

    def __init__(self, token: str) -> None:
        self._digest = hashlib.sha256(token.encode()).digest()

    def __repr__(self) -> str:
        return "BearerToken(<hidden>)"

    def matches(self, authorization: str | None) -> bool:
        scheme, _, presented = (authorization or "").strip().partition(" ")
        if scheme.lower() != "bearer":
            presented = ""
        candidate = hashlib.sha256(presented.strip().encode("utf-8", "surrogateescape")).digest()
        return hmac.compare_digest(candidate, self._digest)


def from_environment(value: str | None) -> BearerToken | None:
    """The token of ``NORIA_FEEDBACK_TOKEN``: None when unset (feedback open to anyone who can reach
    the pod). Set but empty or short is a mistake (a Secret with the wrong key or an empty value),
    refused rather than silently running open. Surrounding whitespace is dropped (a Secret made
    with ``--from-file`` often ends in a newline)."""
    if value is None:
        return None
    token = value.strip()
    if len(token) < MIN_TOKEN_LENGTH:
        raise ValueError(f"{TOKEN_ENV} is set but {'empty' if not token else 'shorter than'}"
                         f"{'' if not token else f' {MIN_TOKEN_LENGTH} characters'}: check the Secret named in the "
                         f"Rollout's spec.feedback.tokenSecretRef (e.g. `openssl rand -hex 32`)")
    return BearerToken(token)

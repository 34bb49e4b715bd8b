"""Reviewed exceptions for the phi service: a matched term judged harmless -> its HMAC under the release key.

``[audit] accept`` in release.toml lists these HMACs; the matcher leaves a term out when its
HMAC is listed (``Matcher(accept=..., key=...)``). The config records the HMAC, never the
value: release.toml is often shared or committed, and an HMAC under the secret key cannot be
tested against guesses by anyone who does not hold the key. ``dcmpack audit --explain`` prints
the HMAC of each hit on the data owner's terminal, to paste after review.
"""

from __future__ import annotations

import hashlib
import hmac

#: Domain separation: the same key also makes pseudonyms and date shifts (``naming.deid``).
_PURPOSE = b"dcmpack audit accept\x00"


def accept_hmac(key: bytes, term: str) -> str:
    """Hex HMAC-SHA256 under ``key`` of one folded search term (as ``audit --explain`` shows it)."""
    return hmac.new(key, _PURPOSE + term.encode(), hashlib.sha256).hexdigest()

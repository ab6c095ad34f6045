"""Dead letters keep the record they were made from, so that ``headwater replay`` can re-drive it once the cause is
fixed; that record is the event as the client sent it, personal data in clear. :class:`LetterSeal` encrypts it.

- **Cipher:** AES-256-GCM, a fresh random 96-bit nonce per letter; the key id is authenticated with the text, so
  a letter cannot be opened under another key by editing its id.
- **Keys:** derived from the PII salts (HKDF-SHA256 with a label of its own, so the derived key and the hashing
  key never coincide), one per salt. A letter is sealed under the salt of the quarter it was written in, and the
  salt id is recorded next to it. No new secret to distribute: whoever holds the salts file can replay, and
  rotating the salts rotates these keys. A salt removed from the file makes the letters sealed under it unreadable,
  as intended for data past its retention.

Sealed, a letter's original is ``nonce ‖ ciphertext ‖ tag``, written base64 in ``original_sealed_b64`` with
``original_seal_key`` (the salt id).
"""
from __future__ import annotations

import datetime as dt
import os
import threading
from typing import Any, Callable, Iterable

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from enrichers.pii import quarter_id

#: HKDF's ``info``: what the derived key is for (a different label gives an unrelated key from the same salt).
KEY_LABEL = b"headwater dead-letter originals v1"
NONCE_BYTES = 12


class SealError(ValueError):
    """A sealed original that cannot be opened: unknown key id (its salt is no longer configured) or altered."""


def _utc_today() -> dt.date:
    return dt.datetime.now(dt.timezone.utc).date()


def derive_key(salt_key: bytes) -> bytes:
    """The 256-bit dead-letter key of one PII salt."""
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=KEY_LABEL).derive(salt_key)


class LetterSeal:
    """Seals and opens dead-letter originals under keys derived from the PII salts. Thread-safe.

    :param salts: the configured PII salts (objects with ``salt_id``, ``key``, ``valid_from``, ``valid_until``)
    :param today: the current UTC date (for tests)
    """

    def __init__(self, salts: Iterable[Any], today: Callable[[], dt.date] = _utc_today):
        self._salts = {s.salt_id: s for s in salts}
        self._today = today
        self._ciphers: dict[str, AESGCM] = {}
        self._lock = threading.Lock()

    @classmethod
    def from_settings(cls, settings: Any) -> LetterSeal:
        """:param settings: :class:`headwater.settings.Settings`"""
        return cls(settings.pii_salts.reveal())

    def _cipher(self, key_id: str) -> AESGCM:
        cipher = self._ciphers.get(key_id)
        if cipher is None:
            salt = self._salts.get(key_id)
            if salt is None:
                raise SealError(f"no PII salt {key_id!r} is configured, so letters sealed under it cannot be opened")
            cipher = AESGCM(derive_key(salt.key))
            with self._lock:
                self._ciphers[key_id] = cipher
        return cipher

    def current_key_id(self) -> str:
        """The salt letters are sealed under today: this quarter's, else the newest one valid today, else (a flow
        that has run into a quarter nobody configured a salt for, whose events all become dead letters) the one
        that stays valid the longest. Sealing under an expired salt still needs that salt to open, so nothing is
        written in clear and the flow keeps going.

        :raises SealError: when no salt is configured at all
        """
        today = self._today()
        own = quarter_id(today)
        if own in self._salts and self._salts[own].valid_from <= today <= self._salts[own].valid_until:
            return own
        valid = [s for s in self._salts.values() if s.valid_from <= today <= s.valid_until]
        if valid:
            return max(valid, key=lambda s: s.valid_from).salt_id
        if not self._salts:
            raise SealError("no PII salt is configured: dead letters cannot be sealed")
        return max(self._salts.values(), key=lambda s: s.valid_until).salt_id

    def seal(self, data: bytes) -> tuple[str, bytes]:
        """``(key id, nonce ‖ ciphertext ‖ tag)`` for ``data``."""
        key_id = self.current_key_id()
        nonce = os.urandom(NONCE_BYTES)
        return key_id, nonce + self._cipher(key_id).encrypt(nonce, data, key_id.encode())

    def open(self, key_id: str, sealed: bytes) -> bytes:
        """The original sealed by :meth:`seal`.

        :raises SealError: naming what is wrong (unknown key id, too short, altered or sealed under another key)
        """
        cipher = self._cipher(key_id)
        if len(sealed) < NONCE_BYTES + 16:
            raise SealError("sealed original is too short to be one")
        try:
            return cipher.decrypt(sealed[:NONCE_BYTES], sealed[NONCE_BYTES:], key_id.encode())
        except InvalidTag:
            raise SealError(f"sealed original does not open under key {key_id!r}: altered, or sealed under "
                            f"another salt with the same id") from None

"""The digests a host sends of what it read, and the same digests of the bytes received.

A host hashes a file's head (or a whole file copied whole) after reading it, so that the
client can tell a copy spliced from two contents, or a head rewritten in place (see
:class:`~remote_sync.mirror.fetch_events.HeadDigest`). It hashes with ``md5sum`` where it
has one, else with POSIX ``cksum`` (coreutils always has it; BusyBox when built with its
``cksum`` applet), else not at all. Neither is asked to resist a forger: what they catch
is a file that changed under a read or between two rounds, which a CRC-32 catches as well
(the byte count it covers is compared too).

A digest names the tool that made it (:class:`Digest`), so a digest of one kind is only
ever compared with the same kind made here: the client learns the host's tool only from
its digest line, after the bytes, so :class:`Hasher` keeps both running. Nothing of this is
stored: the state's fingerprint (:func:`remote_sync.mirror.state.fingerprint_of`) is a
digest of the mirror's own bytes, never a host's.
"""

from __future__ import annotations

import hashlib
import re
import zlib
from typing import Literal

from msgspec import Struct

__all__ = ["MAX_DIGEST_WORD", "Algorithm", "Cksum", "Digest", "Hasher", "digest_of_word"]

Algorithm = Literal["md5", "cksum"]

#: The longest digest word on the wire: ``cksum:<10 digits>:<20 digits>`` (``md5:<32 hex>``
#: is shorter).
MAX_DIGEST_WORD = 37

_MD5_WORD = re.compile(rb"md5:([0-9a-f]{32})")
_CKSUM_WORD = re.compile(rb"cksum:([0-9]{1,10}):([0-9]{1,20})")


class Digest(Struct, frozen=True):
    """A digest and the tool that made it: equal only to a digest of the same kind."""

    algorithm: Algorithm
    value: str
    """``md5``: 32 lowercase hex digits; ``cksum``: ``<CRC>:<byte count>`` in decimal, as
    ``cksum`` prints them."""

    def __str__(self) -> str:
        return f"{self.algorithm}:{self.value}"


def digest_of_word(word: bytes) -> Digest | None:
    """The digest a host's script wrote as ``word`` (``md5:<hex>``, ``cksum:<CRC>:<count>``),
    or None for ``-`` (the host could not hash). Anything else is a :class:`ValueError`."""
    if word == b"-":
        return None
    match = _MD5_WORD.fullmatch(word)
    if match is not None:
        return Digest("md5", match[1].decode("ascii"))
    match = _CKSUM_WORD.fullmatch(word)
    if match is not None and int(match[1]) < 2**32:
        return Digest("cksum", f"{int(match[1])}:{int(match[2])}")
    raise ValueError(f"not a digest: {word[:80]!r}")


# POSIX cksum is the CRC-32 of polynomial 0x04C11DB7 taken most significant bit first, from a
# register of 0, over the bytes and then their count (least significant byte first, as few
# bytes as it takes), complemented. zlib's crc32 is the same polynomial taken least
# significant bit first, so fed each byte with its bits reversed (one table lookup a byte,
# bytes.translate) its register is ours reversed: about 200 times as fast as a Python loop
# over a 256-entry table, which matters for a JSON index of megabytes hashed whole.
_REVERSED = bytes(int(f"{byte:08b}"[::-1], 2) for byte in range(256))
_MASK = 0xFFFFFFFF


def _crc(register: int, data: bytes) -> int:
    """``register`` (bit-reversed) after ``data``. zlib's crc32 complements the register on
    the way in and out: undone on both sides."""
    return zlib.crc32(data.translate(_REVERSED), register ^ _MASK) ^ _MASK


def _reverse32(value: int) -> int:
    return int.from_bytes(value.to_bytes(4, "little").translate(_REVERSED), "big")


class Cksum:
    """POSIX ``cksum`` of the bytes given to :meth:`update`, in pieces or at once."""

    __slots__ = ("_register", "size")

    def __init__(self) -> None:
        self._register = 0
        self.size = 0

    def update(self, data: bytes | bytearray | memoryview) -> None:
        self._register = _crc(self._register, bytes(data))
        self.size += len(data)

    @property
    def value(self) -> int:
        """The CRC ``cksum`` prints for these bytes."""
        count = self.size
        length = bytearray()
        while count:
            length.append(count & 0xFF)
            count >>= 8
        return _reverse32(_crc(self._register, bytes(length))) ^ _MASK


class Hasher:
    """The md5 and the POSIX cksum of the same bytes: which of them the host used is known
    only from its digest line, after the bytes. ``only``: the host's tool, once a digest of
    its has said it (a host hashes with one), so the bytes are hashed once."""

    __slots__ = ("_cksum", "_md5")

    def __init__(self, only: Algorithm | None = None) -> None:
        self._md5 = hashlib.md5(usedforsecurity=False) if only != "cksum" else None
        self._cksum = Cksum() if only != "md5" else None

    def update(self, data: bytes | bytearray | memoryview) -> None:
        if self._md5 is not None:
            self._md5.update(data)
        if self._cksum is not None:
            self._cksum.update(data)

    def digest(self, algorithm: Algorithm) -> Digest | None:
        """The digest ``algorithm`` makes of the bytes; None if this one was not kept."""
        if algorithm == "md5":
            return None if self._md5 is None else Digest("md5", self._md5.hexdigest())
        if self._cksum is None:
            return None
        return Digest("cksum", f"{self._cksum.value}:{self._cksum.size}")

    def agrees(self, digest: Digest) -> bool:
        """Are these bytes the ones the host hashed into ``digest``? (Not when its tool is
        not the one kept: the files are then fetched again, not taken on trust.)"""
        return self.digest(digest.algorithm) == digest

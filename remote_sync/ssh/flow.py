"""Receive-window credit that follows the consumer, not the arrival of data.

What it owns: :class:`ConsumerCredit`, the one place that reaches into asyncssh's channel
internals. asyncssh re-opens a channel's whole receive window as soon as it hands data to the
session (when reading is paused: on the first packet after the resume), however much of it the
application still holds. A consumer slower than the link then holds up to two windows: one in
asyncssh's buffer and one in ours. When the credit follows what the consumer has taken, the
remote may send only ``window - held`` more bytes, so a stream never holds more than one window
whatever the pace of its consumer (apache/mina-sshd fixed the same flaw the same way).

How: the channel's ``_deliver_data`` is shadowed on the instance by a function that hands data
to the session without touching the window, and :meth:`ConsumerCredit.settle` sends
``SSH_MSG_CHANNEL_WINDOW_ADJUST`` for what has been consumed, in steps of at least half a
window, as OpenSSH does. :meth:`ConsumerCredit.install` checks that the channel has what this
relies on (``_deliver_data``, an integer ``_recv_window``, ``send_packet``) and returns None
when it does not; the stream then falls back to asyncssh's pause/resume (two windows).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import asyncssh

log = logging.getLogger(__name__)

#: SSH_MSG_CHANNEL_WINDOW_ADJUST (RFC 4254, section 5.2).
MSG_CHANNEL_WINDOW_ADJUST = 93

#: The least window a shrinking share leaves a channel: two of OpenSSH's 32 KiB packets.
MIN_SHARED_WINDOW = 64 * 1024

Deliver = Callable[[bytes, asyncssh.DataType], None]


class ConsumerCredit:
    """The receive window of one channel, re-opened only for consumed bytes."""

    def __init__(self, chan: Any, window: int, share: Callable[[], int] | None = None) -> None:
        self._chan = chan
        self.window = window
        self._share = share

    @classmethod
    def install(
        cls,
        chan: asyncssh.SSHClientChannel[bytes],
        deliver: Deliver,
        share: Callable[[], int] | None = None,
    ) -> ConsumerCredit | None:
        """Route ``chan``'s data to ``deliver`` with the window left to :meth:`settle`.

        Call it from the session's ``connection_made``, before any data can arrive. Returns
        None (and changes nothing) when this asyncssh keeps its window some other way.
        ``share``, when given, says what window the channel may have *now* (the pool's share
        for the channels open at the moment): the credit then re-opens that much, no more and
        no less, so a channel opened alone gives up its large window as others open beside
        it, and one opened among many takes a larger one as they close.
        """
        internals: Any = chan
        if not (
            callable(getattr(internals, "_deliver_data", None))
            and isinstance(getattr(internals, "_recv_window", None), int)
            and callable(getattr(internals, "send_packet", None))
        ):
            log.debug("asyncssh channel internals differ: flow control by pause/resume")
            return None
        internals._deliver_data = deliver
        return cls(internals, chan.get_recv_window(), share)

    def settle(self, held: int) -> None:
        """Re-open the window for everything received except the ``held`` unconsumed bytes."""
        chan = self._chan
        window = self.window
        if self._share is not None:
            # The share of the moment, also above the window the channel opened with: SSH
            # lets a receiver credit more than its initial window, and a channel opened while
            # seven others ran would otherwise keep an eighth of the budget after they close
            # (the share is never above the pool's ``window``). Never below two full OpenSSH
            # packets, or credit could never be sent, unless the channel opened smaller.
            window = max(self._share(), min(window, MIN_SHARED_WINDOW))
        free = window - chan._recv_window - held
        if free >= window // 2:
            # After the channel closed asyncssh drops the packet (it has no channel number).
            chan.send_packet(MSG_CHANNEL_WINDOW_ADJUST, free.to_bytes(4, "big"))
            chan._recv_window += free

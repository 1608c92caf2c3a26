"""ConsumerCredit against a model of a channel: what the credits of channels opened and
closed in any order add up to, with a host that sends all it is allowed."""

from __future__ import annotations

from fractions import Fraction

from hypothesis import given, settings
from hypothesis import strategies as st

from remote_sync.ssh.flow import ConsumerCredit

BUDGET = 16 * 64 * 1024  # sixteen of the least shared window: no share is floored


class _Chan:
    """What ConsumerCredit touches of an asyncssh channel."""

    def __init__(self, window: int) -> None:
        self._recv_window = window

    def _deliver_data(self, data: bytes, datatype: object) -> None:  # pragma: no cover
        pass

    def send_packet(self, kind: int, payload: bytes) -> None:
        pass


@settings(max_examples=300, deadline=None)
@given(
    steps=st.lists(st.tuples(st.integers(0, 3), st.integers(0, 7), st.floats(0, 1)), max_size=200)
)
def test_credits_granted_stay_within_the_budgets_harmonic_sum(
    steps: list[tuple[int, int, float]],
) -> None:
    """A credit once granted is not taken back, so the windows of channels opened one after
    another add up to more than the pool's budget: the k-th of the channels open now (in the
    order of their last grant) was granted while at least k were open, at most budget / k.
    Whatever the order of opens, closes, arrivals and takes (a credit following the share of
    the moment both ways), what the host may send plus what the consumers hold stays within
    budget * (1 + 1/2 + ... + 1/n), n the channels open now, and each within the budget."""
    channels: list[tuple[_Chan, ConsumerCredit, list[int]]] = []

    def share() -> int:
        return BUDGET // max(1, len(channels))

    for op, which, amount in steps:
        if op == 0 and len(channels) < 8:
            window = BUDGET // (len(channels) + 1)  # the share with itself counted
            chan = _Chan(window)
            channels.append((chan, ConsumerCredit(chan, window, share), [0]))
        elif op == 1 and channels:
            channels.pop(which % len(channels))
        elif channels:
            chan, credit, held = channels[which % len(channels)]
            if op == 2:  # the host sends part of what it may
                sent = int(chan._recv_window * amount)
                chan._recv_window -= sent
                held[0] += sent
            else:  # the consumer takes part of what is held
                held[0] -= int(held[0] * amount)
                credit.settle(held[0])
        outstanding = [chan._recv_window + held[0] for chan, _, held in channels]
        assert all(each <= BUDGET for each in outstanding)
        bound = sum(Fraction(BUDGET, k) for k in range(1, len(channels) + 1))
        assert sum(outstanding) <= bound, (outstanding, bound)

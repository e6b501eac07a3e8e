"""sidecar.signals sets handlers together and always puts back the ones it found."""

from __future__ import annotations

import os
import signal
from types import FrameType

import pytest

from sidecar import signals


def test_installed_handlers_run_and_the_previous_ones_come_back() -> None:
    received: list[int] = []

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        received.append(signum)

    before = signal.getsignal(signal.SIGUSR1), signal.getsignal(signal.SIGUSR2)
    with signals.installed(dict.fromkeys((signal.SIGUSR1, signal.SIGUSR2), on_signal)):
        assert signal.getsignal(signal.SIGUSR1) is on_signal
        os.kill(os.getpid(), signal.SIGUSR2)
    assert received == [signal.SIGUSR2]
    assert (signal.getsignal(signal.SIGUSR1), signal.getsignal(signal.SIGUSR2)) == before


def test_the_previous_handlers_come_back_also_when_the_block_raises() -> None:
    before = signal.getsignal(signal.SIGUSR1)
    with (
        pytest.raises(RuntimeError),
        signals.installed({signal.SIGUSR1: signal.SIG_IGN}),
    ):
        raise RuntimeError
    assert signal.getsignal(signal.SIGUSR1) == before


def test_install_returns_what_restore_puts_back() -> None:
    before = signal.getsignal(signal.SIGUSR1)
    previous = signals.install({signal.SIGUSR1: signal.SIG_IGN})
    assert previous == {signal.SIGUSR1: before}
    assert signal.getsignal(signal.SIGUSR1) == signal.SIG_IGN
    signals.restore(previous)
    assert signal.getsignal(signal.SIGUSR1) == before

"""The copy kernel: plain sends, the memory free again as soon as each call returns."""

from __future__ import annotations

from .._stats import Counters
from ._base import Channel, CompletionListener, Kernel, Transport
from ._socket import socket_of


class CopyKernel(Kernel):
    """Plain copying sends: every channel is the base :class:`Channel`, which copies."""

    name = "copy"

    def open_channel(
        self, transport: Transport, counters: Counters, on_completions: CompletionListener
    ) -> Channel:
        channel = Channel(socket_of(transport, self.name), counters, on_completions)
        channel.copy_only_reason = "the pool's kernel is 'copy'"
        return channel

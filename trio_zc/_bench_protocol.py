"""What the benchmark's sender and receiver agree on: the images and the wire format.

The images are regenerated on both sides from a seed, so the receiver can
compare every byte it receives with what it should have received
(``bytearray == bytes`` is a ``memcmp``, far cheaper than hashing, so the
check does not become the bottleneck it would be with SHA-256 at 64 MiB
per image).

Each case opens one connection and sends :data:`HEADER` (image size, image
count, number of patterns, seed); the receiver answers :data:`READY` once it
has the expected images at hand (so that making them is not timed), and the
sender sends the images back to back, image *i*
being pattern ``i % patterns``. The receiver answers with :data:`ANSWER`
(images intact, images received) and then one ``CLOCK_MONOTONIC``
timestamp in nanoseconds per image, taken when its last byte arrived.
Both processes read the same system-wide clock, so the sender can compute
each image's latency from its own start times.
"""

from __future__ import annotations

import random
import struct
from typing import Final

#: image size, image count, number of patterns, seed
HEADER: Final = struct.Struct("!QQII")
#: the receiver is ready for the images
READY: Final = b"R"
#: images intact, images received
ANSWER: Final = struct.Struct("!QQ")
#: one per image: when its last byte arrived (ns, CLOCK_MONOTONIC)
STAMP: Final = struct.Struct("!Q")

# Not a power of two, so that bytes shifted by a whole block would not
# compare equal by accident.
_BLOCK: Final = 999_983


def patterns(size: int, count: int, seed: int) -> list[bytes]:
    """*count* images of *size* bytes that differ from each other at (almost) every byte.

    Each is a random block repeated and shifted by its index: an image that
    arrives with bytes of an earlier one (the failure this library exists to
    prevent) differs from the expected bytes almost everywhere.
    """
    block = random.Random(seed).randbytes(min(size + count, _BLOCK))
    out = []
    for k in range(count):
        repeats = (size + k) // len(block) + 1
        out.append((block * repeats)[k : k + size])
    return out

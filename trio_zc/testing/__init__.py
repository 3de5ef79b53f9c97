"""Testing helpers for applications that use trio_zc.

:class:`MockKernel` stands in for the operating system: plug it into a pool
with ``open_pool(kernel=MockKernel())`` and make connections with
:meth:`MockKernel.open_stream`. The pytest plugin (installed with the
package) provides the fixtures ``mock_kernel`` and ``mock_pool``.
"""

from ._kernel import MockKernel as MockKernel
from ._peer import MockPeer as MockPeer
from ._sends import MockSend as MockSend
from ._sends import PrematureReuseError as PrematureReuseError

__all__ = ["MockKernel", "MockPeer", "MockSend", "PrematureReuseError"]

from .._exports import publish as _publish

_publish(globals())
del _publish

from .._ki import protect_package as _protect_package

_protect_package(__name__)

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

for _name, _obj in list(globals().items()):
    if getattr(_obj, "__module__", "").startswith("trio_zc.testing._"):
        _obj.__module__ = "trio_zc.testing"
del _name, _obj


from .._ki import protect_package as _protect_package

_protect_package(__name__)

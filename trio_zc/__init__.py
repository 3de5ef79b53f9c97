"""trio_zc: send large in-memory buffers from Trio without copying them,
and without ever letting the application reuse memory the kernel still reads.

Buffers live in a pool (:func:`open_pool`). The application writes into a
:class:`WritableLease`, seals it into a :class:`SealedLease` and sends that;
the memory returns to the pool only when the kernel reports it is done.
"""

from ._cache import CachedLease as CachedLease
from ._cache import CacheStatistics as CacheStatistics
from ._cache import LeaseCache as LeaseCache
from ._errors import ForeignLeaseError as ForeignLeaseError
from ._errors import LeaseError as LeaseError
from ._errors import LeaseLeakWarning as LeaseLeakWarning
from ._errors import LeaseQuarantinedError as LeaseQuarantinedError
from ._errors import LiveViewsError as LiveViewsError
from ._errors import QuarantineWarning as QuarantineWarning
from ._errors import StaleLeaseError as StaleLeaseError
from ._highlevel import ListenerStatistics as ListenerStatistics
from ._highlevel import ZeroCopyListener as ZeroCopyListener
from ._highlevel import open_tcp_listeners as open_tcp_listeners
from ._highlevel import open_tcp_stream as open_tcp_stream
from ._highlevel import serve_listeners as serve_listeners
from ._highlevel import serve_tcp as serve_tcp
from ._lease import ReadOnlyBuffer as ReadOnlyBuffer
from ._lease import SealedLease as SealedLease
from ._lease import WritableLease as WritableLease
from ._pool import DEFAULT_DRAIN_TIMEOUT as DEFAULT_DRAIN_TIMEOUT
from ._pool import BufferPool as BufferPool
from ._pool import LeaseScope as LeaseScope
from ._pool import PoolStatistics as PoolStatistics
from ._pool_open import open_pool as open_pool
from ._policy import ZeroCopyPolicy as ZeroCopyPolicy
from ._stats import SendStatistics as SendStatistics
from ._stats import StreamStatistics as StreamStatistics
from ._stream import ZeroCopyStream as ZeroCopyStream

__version__ = "0.1.0.dev0"

__all__ = [
    "DEFAULT_DRAIN_TIMEOUT",
    "BufferPool",
    "CacheStatistics",
    "CachedLease",
    "ForeignLeaseError",
    "LeaseCache",
    "LeaseError",
    "LeaseLeakWarning",
    "LeaseQuarantinedError",
    "LeaseScope",
    "ListenerStatistics",
    "LiveViewsError",
    "PoolStatistics",
    "QuarantineWarning",
    "ReadOnlyBuffer",
    "SealedLease",
    "SendStatistics",
    "StaleLeaseError",
    "StreamStatistics",
    "WritableLease",
    "ZeroCopyListener",
    "ZeroCopyPolicy",
    "ZeroCopyStream",
    "open_pool",
    "open_tcp_listeners",
    "open_tcp_stream",
    "serve_listeners",
    "serve_tcp",
]

# Reprs, tracebacks and the reference show trio_zc.X, not trio_zc._module.X.
from ._exports import publish as _publish

_publish(globals())
del _publish

from ._ki import protect_package as _protect_package

_protect_package(__name__)
del _protect_package

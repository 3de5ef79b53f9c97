"""The kernels: how a pool's streams put bytes on the wire.

``_base`` is the interface (Kernel, Channel, Transport, SendableLease);
``_socket`` the socket operations every real kernel shares; ``_closing``
the close protocol and refusal retry of the zero-copy channels; ``_heads``
the private pages a zero-copy call's head is copied into;
``_completion`` the channel whose calls are completed by records
(MSG_ZEROCOPY and the mock). One module per kernel: ``_copy``,
``_msg_zerocopy`` (with ``_errqueue`` and ``_completions``, its record
parser and tracker), ``_io_uring`` (with ``_ring`` and ``_uring_tracker``),
``_sendfile`` (with ``_thp``); ``_choice`` picks one by name, ``_memlock``
reads the locked-memory limit. Nothing here imports the lease or pool
modules (``tests/tools/test_boundary.py``).
"""

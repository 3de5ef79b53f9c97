"""The public API: pools, leases, streams, servers, images, HTTP, the mock, bad input."""

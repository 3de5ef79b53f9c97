"""The project's own measurements, outside the shipped package.

Each module is a script (``python benchmarks/<name>.py --help``), type-checked
with the package and run with its smallest arguments by
``tests/tools/test_benchmarks_smoke.py`` (``image_workers.py`` by
``tests/tools/test_example_render_in_workers.py``, with the example it measures):

- ``acceptance.py``: ``python -m trio_zc bench`` checked against the
  project's performance targets (docs/benchmarks.rst), with
- ``stalled.py``: a server's CPU and memory while 1,000 clients do not read,
- ``chart.py``: the figure in docs/benchmarks.rst (a module, no script);
- ``long_run.py``: issue 21's protocol: the throughput targets over several
  long runs (3 GiB x 7 per case and run, shuffled), each judged on its worst run;
- ``kernel_cost.py``: the table in docs/kernels.rst;
- ``stale_bytes.py``: what clearing a lease's memory costs (docs/lifecycle.rst);
- ``image_workers.py``: image work in worker processes against Pillow in the
  event loop or in threads (docs/recipes.rst);
- ``syscalls_per_response.py``: send calls per HTTP response on each kernel;
- ``http_load.py``: trio_zc.http under wrk against a plain Trio + h11 server
  and nginx (docs/http_benchmark.rst; smoke-tested by
  ``tests/tools/test_benchmarks_http_load.py``).
"""

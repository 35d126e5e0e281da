"""One module per backend for bench_backends.py.

Each defines ``Skip`` (an exception: this host cannot run it), ``setup() -> state``,
``nixcell(state, argv) -> callable`` and ``bare(state, argv) -> callable`` (each call runs the
program once to its end, checking it succeeded), ``memory(state) -> MiB | None`` (host memory
one running cell costs, measured while one runs) and ``teardown(state)``; ``SLOW`` divides the
run count (a TCG microVM takes seconds).
"""

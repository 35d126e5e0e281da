"""The job service front (``nixcell serve`` and its client): jobs compile to the same CellSpec.

Layers, top to bottom: ``api`` (HTTP, auth) -> ``service`` (JobService: queue, cells, logs) ->
``store`` (the JobStore interface; ``sqlite`` behind it) and ``model`` (pure data).
"""

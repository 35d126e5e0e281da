"""Project mode: a ``nixcell.toml`` (or nixcage's ``nixcage.toml``) per project, compiled to the
same CellSpec as ``nixcell run``'s flags. docs/project.md describes the format and levels.

The API (what the CLI commands use; import from the modules, this package imports nothing so
that the warm path can import ``project.discover`` alone):

- ``discover.find(start, explicit=None, ignore=False) -> Found | None``: the project for a
  directory (``--project DIR``, ``--no-project``); ``Found(root, path, kind)``, kind
  "nixcell" | "nixcage". Refuses untrusted and nested configs (one-line ``UsageError``).
- ``load.load(found) -> Project``: the checked config (``.found``, ``.level``, ``.warnings``,
  ``.config``: a ``load.Config``; ``.where(table, key)`` names a key as ``file:line: [t] k``).
- ``state.ensure_state(project)``: make ``.nixcell/local/*``, ``.nixcell/``, ``.git/hooks``
  and the audit dir host-side, refusing symlinks; call it before compiling.
- ``compile.compile_spec(project, command, flags, cwd) -> CellSpec``: merge with the flags of
  ``nixcell run`` (flags win, lists add); ``compile.draft(project, cwd).skipped`` lists the
  missing optional binds (for ``status``); ``compile.network_mode(project, flags)``.
"""

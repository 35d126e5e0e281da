"""Project mode: a directory's nixcell.toml (or nixcage.toml) compiled to a cell."""

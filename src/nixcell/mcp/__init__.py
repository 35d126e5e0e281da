"""nixcell's MCP server: a ``run`` tool that executes code in cells (``nixcell mcp``)."""

"""The MCP server: the agent work loop as MCP tools (``qs mcp`` over stdio, ``/mcp`` over HTTP).

``tools`` defines the tools and profiles; ``server`` builds the SDK server and runs it over stdio;
``http`` mounts it in the FastAPI app behind the API's bearer tokens.
"""

"""Serving an admitted call: the registry of tools, resources and prompts (:mod:`.registry`,
:mod:`.components`, :mod:`.specs`), the one FastMCP server built from it (:mod:`.server`,
:mod:`.arguments`), the runner that executes a call with its audit row (:mod:`.runner`), the
MCP SDK transport (:mod:`.transport`, :mod:`.streaming`, :mod:`.cancellation`,
:mod:`.request_state`), the JSON-RPC envelope (:mod:`.envelope`) and the call's context
(:mod:`.context`)."""

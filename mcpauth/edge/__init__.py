"""The HTTP edge of ``/mcp``: the ASGI app that governs every request (:mod:`.pipeline`), the
checks made before admission (:mod:`.guards`: Host/Origin, body cap and time limit, bearer
token) and what is done with a reply (:mod:`.capture`: its audit row and headers)."""

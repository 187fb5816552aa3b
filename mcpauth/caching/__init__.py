"""Process-local caches and their cross-process invalidation, shared by identity and admission.

* :mod:`~mcpauth.caching.localcache`: the TTL caches that keep verified tokens, tenants, scope
  maps and client policies in the worker, and ``cache_only()``, under which anything that would
  need I/O raises ``CacheMiss`` (admission on the event loop);
* :mod:`~mcpauth.caching.revocation`: a shared configuration version that tells every worker
  to drop those caches when an admin or a command changed what they hold.

Both import nothing else of ``mcpauth`` but its settings, so identity, admission, the models
and observability can all use them without pointing at one another.
"""

"""Whether a caller may go on: client policies and rate limits (:mod:`.ratelimit`, counted over
:mod:`.redispipe` into the Django cache backend :mod:`.cache`), the per-IP refusal budget
(:mod:`.floods`), the caches every worker keeps and clears on a configuration change
(:mod:`.localcache`, :mod:`.revocation`), and the admission steps of a request (:mod:`.gate`)."""

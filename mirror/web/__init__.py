"""The metrics and debug front end: a quart-trio app served by hypercorn on `--metrics-addr`.

Kept import-light on purpose: the hot path imports `mirror.web.feed`, and that
must not pull in quart or hypercorn.
"""

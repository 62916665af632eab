"""Security tests for issue 14 ("Trust"): one module per point. A package, so its module names never clash
with the ones in tests/ (and tests/ stays on sys.path for the shared fixtures)."""

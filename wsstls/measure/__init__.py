"""The measuring harness: the copy-counting shim, the copy ledger, the benchmarks.

Nothing in the library or the server imports this package; it drives them.
"""

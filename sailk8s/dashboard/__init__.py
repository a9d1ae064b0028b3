"""A read-only web dashboard of the runs in a store (`python -m sailk8s ui`), read through the ledger."""

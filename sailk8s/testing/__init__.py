"""Fake Kubernetes API and training operator for tests (like kopf.testing)."""

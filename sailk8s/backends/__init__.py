"""Backends run one stage attempt: local processes or a Kubernetes PyTorchJob."""

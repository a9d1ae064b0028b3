"""The Kubernetes backend: PyTorchJobs (Training Operator v1); only client.py talks to the API."""

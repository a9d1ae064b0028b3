"""sail-pipeline: the SAIL-VL recipe as Kubernetes-native batch stages."""

__version__ = "0.1.0"

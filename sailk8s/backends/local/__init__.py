"""The local backend: each attempt runs the pod's own launcher as processes on this machine."""

"""The netns backend: namespaces, an overlayfs root on the shared image, a veth on the run's
bridge, a cgroup and a real sshd per guest (the default; needs root)."""

from harness.backends.netns.backend import NetnsBackend

__all__ = ["NetnsBackend"]

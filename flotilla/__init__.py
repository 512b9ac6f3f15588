"""Flotilla: a containerd-compatible core container runtime built as cooperating processes."""

__version__ = "0.1.0"

"""Flotilla's benchmarks, side by side with containerd in the same run (``make bench``)."""

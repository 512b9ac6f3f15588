"""The runtime service: containerd's tasks on runc or crun, each under a small C supervisor."""

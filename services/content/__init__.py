"""The content service: the shared, content-addressed blob store (containerd's Content API)."""

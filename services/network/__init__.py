"""Networks and the interfaces of tasks on this host, by the CNI plugins (docs/network.md)."""

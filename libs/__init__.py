"""Shared foundations of the Flotilla services: bus, wire records, errors, config, metrics.

Imported as ``flotilla.libs``; nothing here imports a service or grpc.
"""

"""The services' contracts: subjects, wire records and a typed bus client for each.

They live in libs so that the gateway, other services and integrators share them
without importing a service.
"""

"""Flotilla's services, imported as ``flotilla.services.<name>``; none imports another."""

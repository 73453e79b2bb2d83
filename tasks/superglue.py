"""Registrations for superglue (being written)."""

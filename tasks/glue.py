"""Registrations for glue (being written)."""

"""Registrations for mixtures (being written)."""

"""Registrations for synthetic (being written)."""

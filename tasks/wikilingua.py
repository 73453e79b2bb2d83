"""Registrations for wikilingua (being written)."""

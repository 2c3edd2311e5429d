"""Preference data: readers, registry, templates, encoding, quality checks."""

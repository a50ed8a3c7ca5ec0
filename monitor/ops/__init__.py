"""Operator commands (status, release, reject, resume) and their text rendering."""

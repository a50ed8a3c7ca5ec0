"""The warehouse connection, its engine settings, and the cross-process cycle lock."""

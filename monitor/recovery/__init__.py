"""Last-known-good snapshots of the built tables, rollback to one, retraction of a batch."""

"""The state store (every table the monitor keeps), the batch ledger, the audit trail."""

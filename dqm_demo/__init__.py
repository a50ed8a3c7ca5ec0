"""The synthetic HR/benefits feed generator and the bounded demo: not part of the runtime."""

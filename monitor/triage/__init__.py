"""Root-cause analysis of a bad run (entry points in ``analyse``, one module per step)
and its report renderers."""

"""Root-cause analysis of a bad run and its report renderers."""

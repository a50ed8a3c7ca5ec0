"""Layer profiles (metric points), drift scores, cost estimates, feed state."""

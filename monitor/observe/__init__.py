"""Layer profiles (metric points), drift scoring, cost estimates, feed state: what a run
looks like."""

"""Quality-resolution optimisation: targets and decisions, the search, the GOP stage."""

"""Analysis: reading runs and studies back, the comparison table and report, and refits."""

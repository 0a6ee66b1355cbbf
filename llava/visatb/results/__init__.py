"""What a finished chain shows: the report (report.md) and the comparison against a baseline."""

"""The core every stage uses: config, io, records, tracking, stats, report, plots, and the
"nothing to refresh" marker (skipped)."""

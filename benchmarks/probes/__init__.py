"""One-question GPU probes: small scripts whose output is quoted in benchmarks/NOTES.md (logs in results/logs)."""

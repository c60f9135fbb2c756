"""GEPA as a resumable HTTP service: job records, the run-directory store, routes, client and CLI."""

"""Running the process: graceful shutdown, GC tuning, log format and redaction."""

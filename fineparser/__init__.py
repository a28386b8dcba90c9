"""fineparser."""

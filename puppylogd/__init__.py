"""puppylogd: tail HTTP access logs into PostgreSQL, exactly once."""

__version__ = "0.1.0"

"""puppylog-watch: the console that shows Puppylog's stats and alerts as they happen."""

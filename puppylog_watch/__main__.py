"""Run the console with ``python -m puppylog_watch``."""

from puppylog_watch.cli import main

raise SystemExit(main())

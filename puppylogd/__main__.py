"""Run the daemon with ``python -m puppylogd``."""

from puppylogd.cli import main

raise SystemExit(main())

"""Run the daemon with ``python -m puppylogd``."""

from puppylogd.launch import main

raise SystemExit(main())

"""`python -m leaderboard NAME ...`, the same as `sweepboard leaderboard NAME ...`."""

from leaderboard.cli import main

raise SystemExit(main())

"""``python -m gopflow``: the command line."""

from gopflow.cli import main

raise SystemExit(main())

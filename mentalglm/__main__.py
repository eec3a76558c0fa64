"""``python -m mentalglm`` runs the command line."""

from mentalglm.cli import main

raise SystemExit(main())

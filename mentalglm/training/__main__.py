"""``python -m mentalglm.training`` runs ``mentalglm train`` (also under ``torchrun -m``)."""

from mentalglm.training.cli import main

raise SystemExit(main())

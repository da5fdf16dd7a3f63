"""``python -m defpert`` (also what ``torchrun -m defpert`` runs)."""

from defpert.cli import main

raise SystemExit(main())

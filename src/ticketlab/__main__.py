"""``python -m ticketlab`` (and ``torchrun --nproc-per-node N -m ticketlab imp ...``): the CLI."""
import sys

from .cli import main

sys.exit(main())

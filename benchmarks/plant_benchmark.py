"""The Plant 'n' Seek benchmark with the README's protocol: ``ticketlab plant`` with these flags.

    python benchmarks/plant_benchmark.py

runs

    ticketlab plant --tasks relu circle helix --methods <all 13 methods> --kept 1 0.5 0.1 0.01 ticket \\
        --seeds 5 --depth 5 --width 100 --workers 2

(plus the unpruned host and the planted ticket per task and seed; every other protocol option at its
default, the paper's: Adam lr 1e-3, batch 32, 10 epochs, scores from 40 samples, multishot 10 rounds
of 5 epochs). Any flag given here is appended and wins (``--workers 8``, ``--runs-dir``, ``--out``,
a protocol flag). Each cell is a run in the store: a killed benchmark is continued by the same
command, and a finished one is redrawn without computing anything. ``ticketlab plant --help``
lists the options.
"""
import sys

from ticketlab.cli import main
from ticketlab.planting.benchmark import METHODS

README_PROTOCOL = ["--tasks", "relu", "circle", "helix", "--methods", *METHODS,
                   "--kept", "1", "0.5", "0.1", "0.01", "ticket", "--seeds", "5", "--depth", "5", "--width", "100",
                   "--workers", "2"]

if __name__ == "__main__":
    sys.exit(main(["plant", *README_PROTOCOL, *sys.argv[1:]]))

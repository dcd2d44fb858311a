"""The Plant 'n' Seek benchmark, as the README measured it: the same as ``ticketlab plant``.

    python benchmarks/plant_benchmark.py --workers 2 --out runs/reports/plant_benchmark

Depth 5, width 100 hosts; Adam lr 1e-3, batch 32, 10 epochs; scores from 40 samples; multishot IMP
10 rounds of 5 epochs; edge-popup SGD 0.1 / momentum 0.9 / wd 5e-4 / cosine, 10 epochs; every task x
method x kept fraction x 3 seeds. See ``ticketlab plant --help`` for the options.
"""
import sys

from ticketlab.cli import main

if __name__ == "__main__":
    sys.exit(main(["plant", *sys.argv[1:]]))

"""Slow reproductions (run with `python -m pytest -m slow`): the published effects, end to end."""
from __future__ import annotations

import pytest

from ticketlab.cli import DEMO, build_parser, imp_config_from_args
from ticketlab.experiments.imp import run_imp
from ticketlab.store import Store


@pytest.mark.slow
def test_demo_ticket_beats_random_reinit_at_low_density(tmp_path):
    """LTH on digits: below ~3% of the weights the ticket keeps its accuracy, re-init falls."""
    cfg = imp_config_from_args(build_parser().parse_args(["demo"]), base=DEMO)
    rows = run_imp(cfg, Store(tmp_path), device="cpu", progress=False, log=lambda _: None)
    by = {(r["level"], r["branch"]): r for r in rows}
    dense = by[(0, "ticket")]["final_test_accuracy"]
    for level in (8, 9):  # 1.7% and 1.0% of the weights
        ticket = by[(level, "ticket")]["final_test_accuracy"]
        reinit = by[(level, "reinit")]["final_test_accuracy"]
        random = by[(level, "random")]["final_test_accuracy"]
        assert ticket >= dense - 0.04, (level, ticket, dense)
        assert ticket >= reinit + 0.05, (level, ticket, reinit)
        assert reinit > random, (level, reinit, random)

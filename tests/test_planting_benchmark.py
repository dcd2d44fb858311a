"""Plant 'n' Seek benchmark cells on a tiny configuration (depth 3; width 30, the Helix target's width)."""
import math

import pytest
import torch

from ticketlab.planting import host_network, make_task
from ticketlab.planting.benchmark import METHODS, benchmark_table, run_benchmark, run_cell

TINY = dict(depth=3, width=30, epochs=1, imp_rounds=2, imp_epochs=1)
KEYS = {"task", "method", "kept", "density", "seed", "strong", "weak", "strong_mse_rescaled", "weak_mse_rescaled",
        "recall", "precision", "jaccard", "effective_density", "collapsed", "seconds"}


def _total_weights(task: str) -> int:
    d = make_task(task, n=10)
    host = host_network(d.input_dim, d.output_dim, depth=TINY["depth"], width=TINY["width"])
    return sum(m.weight.numel() for m in host.modules() if isinstance(m, torch.nn.Linear))


@pytest.mark.parametrize("task", ["relu", "circle", "helix"])
@pytest.mark.parametrize("method", ["magnitude", "synflow", "snip", "edgepopup", "imp"])
@pytest.mark.parametrize("kept", ["ticket", 0.5])
def test_cell(task, method, kept):
    row = run_cell(task, method, kept, 0, return_model=True, **TINY)
    assert KEYS <= row.keys()
    asked = row["ticket_density"] if kept == "ticket" else kept
    total, layers = _total_weights(task), TINY["depth"] - 1
    assert abs(row["density"] * total - round(asked * total)) <= layers
    params = dict(row["model"].named_parameters())
    for name, keep in row["mask"].items():
        assert torch.all(params[name].detach()[~keep] == 0), name
    for key in ("recall", "precision", "jaccard", "effective_density"):
        assert 0.0 <= row[key] <= 1.0, key
    assert 0 <= row["collapsed"] <= layers
    assert math.isfinite(row["strong"]) and math.isfinite(row["weak"])


def test_dense_keeps_everything():
    row = run_cell("circle", "magnitude", 1, 0, **TINY)
    assert row["density"] == 1.0 and row["recall"] == 1.0


@pytest.mark.parametrize("task", ["relu", "circle", "helix"])
def test_ticket_reproduces_target(task):
    row = run_cell(task, "ticket", "ticket", 0, **TINY)
    assert row["recall"] == 1.0 and row["precision"] == 1.0 and row["jaccard"] == 1.0
    assert row["density"] == pytest.approx(row["ticket_density"])
    if task == "relu":
        assert row["strong"] < 5e-4 and row["strong_mse_rescaled"] < 5e-4
    elif task == "helix":
        assert row["strong_mse_rescaled"] < 1e-3
    else:
        assert row["strong"] > 0.95


def test_methods_and_table():
    assert len(METHODS) == 9
    rows = run_benchmark(["relu", "circle"], ["magnitude", "ticket"], ["ticket", 0.5], [0, 1], **TINY)
    assert len(rows) == 2 * 2 * 2 * 2
    table = benchmark_table(rows)
    assert "### relu: weak" in table and "### circle: strong" in table and "recovery" in table
    assert "| ticket | 1.000 [1.000, 1.000] | 1.000 [1.000, 1.000]" in table


def test_unknown_method():
    with pytest.raises(ValueError):
        run_cell("relu", "nope", 0.5, 0, **TINY)


def test_cli_plant_writes_tables_and_plots(tmp_path, capsys):
    from ticketlab.cli import main

    out = tmp_path / "plant"
    assert main(["plant", "--tasks", "relu", "circle", "--methods", "magnitude", "ticket", "--kept", "0.5", "ticket",
                 "--seeds", "1", "--depth", "3", "--width", "30", "--epochs", "1", "--workers", "1",
                 "--out", str(out), "--no-progress"]) == 0
    text = (out / "report.md").read_text()
    assert "### relu" in text and "### circle" in text and "| magnitude |" in text
    assert (out / "weak.png").stat().st_size > 10_000 and (out / "strong.png").exists()
    assert "8 cells" in capsys.readouterr().out

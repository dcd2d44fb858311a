"""Plant 'n' Seek cells in the Store (issue 12 item 5): reuse, kills, damage, worker cleanup, reports."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from faults import killed_after
from ticketlab.cli import main
from ticketlab.planting.benchmark import Protocol
from ticketlab.planting.study import PlantCell, PlantStudyConfig, run_study, write_report
from ticketlab.store import CorruptFileError

TINY = Protocol(depth=3, width=30, samples=400, epochs=1, multishot_rounds=2, multishot_epochs=1)
STUDY = dict(tasks=["relu", "circle"], methods=["magnitude", "multishot_random"], kept=[1, 0.5, "ticket"], seeds=[0])
TINY_FLAGS = ["--depth", "3", "--width", "30", "--samples", "400", "--epochs", "1", "--multishot-rounds", "2",
              "--multishot-epochs", "1"]


def study(store, workers=1, **kw):
    return run_study(**{**STUDY, **kw}, protocol=TINY, store=store, workers=workers, log=lambda text: None)


def text(rows):
    """Rows as comparable text: NaN equals NaN, and the timing field aside."""
    return json.dumps([{k: v for k, v in r.items() if k != "seconds"} for r in rows], sort_keys=True)


def files(root: Path) -> dict[Path, tuple[int, bytes]]:
    return {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in root.rglob("*")
            if p.is_file() and p.name not in ("index.sqlite", ".lock")}


@pytest.fixture(scope="module")
def clean(tmp_path_factory):
    """An uninterrupted study: its store and rows."""
    root = tmp_path_factory.mktemp("clean")
    return root, study(root)


def test_cells_of_a_study_and_their_hashes():
    cfg = PlantStudyConfig(("relu",), ("magnitude", "ticket", "magnitude"), (1, "1", 0.5, "ticket"), (0, 1), TINY)
    cells = [(c.method, c.kept, c.seed) for c in cfg.cells()]
    assert cells == [("dense", 1.0, 0), ("dense", 1.0, 1), ("magnitude", 0.5, 0), ("magnitude", 0.5, 1),
                     ("magnitude", "ticket", 0), ("magnitude", "ticket", 1), ("ticket", "ticket", 0),
                     ("ticket", "ticket", 1)]
    # kept 1 of a pruning method is the dense host; 1 and 1.0 name one cell; the protocol is in the hash
    assert PlantStudyConfig(("relu",), ("magnitude",), (0.5, "ticket"), (0, 1), TINY).hash == cfg.hash
    assert PlantCell("relu", "dense", 1, 0, TINY).hash == PlantCell("relu", "dense", 1.0, 0, TINY).hash
    assert PlantCell("relu", "dense", 1, 0, TINY).hash != PlantCell("relu", "dense", 1, 0, Protocol()).hash
    with pytest.raises(ValueError, match="dense host"):
        PlantCell("relu", "magnitude", 1.0, 0, TINY)


def test_a_second_identical_call_computes_nothing_and_touches_nothing(clean):
    root, rows = clean
    assert rows.computed == 2 * (1 + 2 * 2 + 1) and rows.reused == 0
    assert [(r["task"], r["method"], r["kept"]) for r in rows][:6] == [
        ("relu", "dense", 1.0), ("relu", "magnitude", 0.5), ("relu", "magnitude", "ticket"),
        ("relu", "multishot_random", 0.5), ("relu", "multishot_random", "ticket"), ("relu", "ticket", "ticket")]
    before = files(root)
    again = study(root)
    assert again.computed == 0 and again.reused == len(rows)
    assert json.dumps(again) == json.dumps(rows)  # the very same rows, timing included
    assert files(root) == before  # nothing rewritten, not even a modification time


def test_rows_do_not_depend_on_the_number_of_workers(clean, tmp_path):
    _, rows = clean
    parallel = study(tmp_path, workers=2)
    assert parallel.computed == len(rows)
    assert text(parallel) == text(rows)  # same order and numbers, whatever order the workers finished in


def test_a_killed_study_reruns_to_the_rows_of_an_uninterrupted_one(clean, tmp_path):
    _, rows = clean
    summaries = []

    def third_cell_summary(path):
        if path.name == "summary.json":
            summaries.append(path)
        return len(summaries) == 3

    # cells are computed in batches of one task (here: relu's 6 cells, then circle's), stored one by
    # one at the end of their batch: killed after the 3rd summary of the relu batch
    with killed_after(third_cell_summary):
        study(tmp_path)
    # the rerun computes relu's 3 missing cells in a new stack, then is killed while it opens the
    # circle batch's runs (the 2nd environment record written in this call: relu's exist already)
    envs = []
    with killed_after(lambda path: path.name == "environment.json" and not envs.append(path) and len(envs) == 2):
        study(tmp_path)
    again = study(tmp_path)
    assert again.reused == 6 and again.computed == len(rows) - 6
    assert text(again) == text(rows)
    assert not list(tmp_path.rglob("*.tmp"))
    assert main(["verify", "--runs-dir", str(tmp_path)]) == 0


def test_a_damaged_cell_summary_is_reported_not_recomputed_over(clean, tmp_path, capsys):
    import shutil

    root = tmp_path / "runs"
    shutil.copytree(clean[0], root)
    cell = PlantCell("circle", "magnitude", 0.5, 0, TINY)
    path = root / cell.hash / "summary.json"
    damaged = path.read_bytes().replace(b'"seed": 0', b'"seed": 1')
    assert damaged != path.read_bytes()
    path.write_bytes(damaged)
    with pytest.raises(CorruptFileError, match="summary.json is corrupt"):
        study(root)
    assert path.read_bytes() == damaged
    argv = ["plant", "--tasks", "relu", "circle", "--methods", "magnitude", "multishot_random", "--kept", "0.5",
            "ticket", "--seeds", "1", *TINY_FLAGS, "--workers", "1", "--runs-dir", str(root), "--no-progress"]
    assert main(argv) == 2
    assert f"{cell.hash}/summary.json is corrupt" in capsys.readouterr().err
    assert path.read_bytes() == damaged


def _children(pid: int) -> list[int]:
    out = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                out.append(int(entry.name))
    return out


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state not in ("Z", "X")  # a zombie nobody reaped has ended


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_workers_end_when_the_parent_is_killed(tmp_path):
    runs = tmp_path / "runs"
    argv = ["plant", "--tasks", "relu", "circle", "--methods", "magnitude", "snip", "random", "--kept", "0.5", "0.1",
            "ticket", "--seeds", "2", "--depth", "3", "--width", "50", "--samples", "2000", "--epochs", "3",
            "--workers", "2", "--runs-dir", str(runs), "--no-progress"]
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[1] / "src")}
    parent = subprocess.Popen([sys.executable, "-m", "ticketlab.cli", *argv], env=env, cwd=tmp_path,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 60
        while time.time() < deadline:  # until both workers run cells
            workers = _children(parent.pid)
            if len(workers) >= 2 and len(list(runs.glob("*/environment.json"))) >= 3:
                break
            assert parent.poll() is None, "the study ended before it could be killed"
            time.sleep(0.05)
        else:
            pytest.fail("the workers never started")
        assert not (runs / "reports").exists()
        os.kill(parent.pid, signal.SIGKILL)
        parent.wait()
        deadline = time.time() + 5
        while any(_alive(w) for w in workers) and time.time() < deadline:
            time.sleep(0.05)
        assert not [w for w in workers if _alive(w)]
    finally:
        if parent.poll() is None:
            parent.kill()
            parent.wait()
    # the rerun completes the study from where it was killed
    assert main([*argv, "--workers", "1"]) == 0
    assert len(json.loads((runs / "reports" / "plant" / "rows.json").read_text())) == 2 * (2 + 3 * 3 * 2 + 2)
    assert main(["verify", "--runs-dir", str(runs)]) == 0


def test_out_is_replaced_as_a_whole(clean, tmp_path, capsys):
    import shutil

    root = tmp_path / "runs"
    shutil.copytree(clean[0], root)
    argv = ["plant", "--tasks", "relu", "circle", "--methods", "magnitude", "multishot_random", "--kept", "1", "0.5",
            "ticket", "--seeds", "1", *TINY_FLAGS, "--workers", "1", "--runs-dir", str(root)]
    assert main(argv) == 0
    out = root / "reports" / "plant"
    printed = capsys.readouterr().out
    assert "reused 12 cells, computing 0" in printed and "12 cells in" in printed
    report = (out / "report.md").read_text()
    assert "### relu" in report and "### circle" in report and "| magnitude |" in report
    assert "`ticketlab plant --tasks relu circle" in report
    assert (out / "weak.png").stat().st_size > 10_000 and (out / "strong.png").exists()
    (out / "stale.png").write_bytes(b"old plot")
    assert main(argv) == 0
    assert not (out / "stale.png").exists() and (out / "weak.png").exists()
    assert sorted(p.name for p in out.parent.iterdir()) == ["plant"]  # no temp folder left
    # a folder the report did not write is never replaced
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "thesis.tex").write_text("precious")
    assert main([*argv, "--out", str(foreign)]) == 2
    assert "holds files that no plant report wrote" in capsys.readouterr().err
    assert (foreign / "thesis.tex").read_text() == "precious"


def test_a_swap_killed_between_its_renames_is_finished_by_the_next_report(clean, tmp_path):
    rows = clean[1]
    out = tmp_path / "plant"
    write_report(rows[:6], out, "old")
    # the state a kill between the two renames leaves (where renameat2 cannot exchange): the old
    # report moved aside, the new one complete beside it, no out
    os.rename(out, tmp_path / ".plant.old-x1")
    (tmp_path / ".plant.new-x2").mkdir()
    (tmp_path / ".plant.new-x2" / "report.md").write_text("torn")
    write_report(rows, out, "new")
    assert "\nnew\n" in (out / "report.md").read_text() and "### circle" in (out / "report.md").read_text()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["plant"]


def test_ls_and_report_list_and_draw_a_study(clean, capsys):
    root, rows = clean
    assert main(["ls", "experiment=plant", "--runs-dir", str(root)]) == 0
    listed = capsys.readouterr().out
    assert listed.count(" plant ") == len(rows) and "planted-mlp-d3-w30" in listed and "multishot_random" in listed
    assert main(["ls", "experiment=plant-study", "--runs-dir", str(root)]) == 0
    listed = capsys.readouterr().out.splitlines()
    assert len(listed) == 2 and rows.study in listed[1] and "relu+circle" in listed[1]
    assert main(["report", rows.study[:6], "--runs-dir", str(root)]) == 0
    out = root / "reports" / f"plant-{rows.study[:8]}"
    assert "### relu" in (out / "report.md").read_text() and (out / "weak.png").exists()
    drawn = json.loads((out / "rows.json").read_text())
    assert [(r["task"], r["method"], r["kept"]) for r in drawn] == [(r["task"], r["method"], r["kept"]) for r in rows]
    assert main(["report", rows.study, "--runs-dir", str(root), "--out", str(root / "one")]) == 0


def test_multishot_random_skips_its_trainings_and_keeps_its_rows(monkeypatch):
    """Random scores never read the weights: the rounds' trainings are skipped, the rows unchanged."""
    import json

    import ticketlab.planting.cells as cells
    from ticketlab.planting.benchmark import Protocol

    tiny = Protocol(depth=4, width=24, samples=400, epochs=1, multishot_rounds=3, multishot_epochs=1)
    todo = [("relu", "multishot_random", 0.2, 0), ("circle", "multishot_random", "ticket", 1),
            ("circle", "multishot_magnitude", 0.2, 1)]
    fits = []
    real_fit = cells._Stacks.fit

    def counting_fit(self, jobs, epochs, what):
        fits.append(len(jobs))
        return real_fit(self, jobs, epochs, what)

    monkeypatch.setattr(cells._Stacks, "fit", counting_fit)
    skipped = cells.run_cells(todo, tiny)
    skipped_fits, fits[:] = list(fits), []
    monkeypatch.setattr(cells, "WEIGHT_FREE_SCORES", frozenset())
    trained = cells.run_cells(todo, tiny)

    def text(row):
        return json.dumps({k: v for k, v in row.items() if k != "seconds"}, sort_keys=True)

    assert [text(r) for r in skipped] == [text(r) for r in trained]
    # trained: round 1 relu's cell and circle's two (one H under the pool), rounds 2 and 3 all three,
    # then the weak training of all three; skipped: only what the magnitude cell needs
    assert fits == [2, 3, 3, 3] and skipped_fits == [1, 1, 1, 3]


def test_cell_ticket_recomputes_the_stored_cell_and_refuses_another(tmp_path, monkeypatch):
    import ticketlab.planting.benchmark as benchmark
    from ticketlab.planting.study import cell_ticket, compute_cell
    from ticketlab.store import Store

    store = Store(tmp_path / "runs")
    cell = PlantCell("circle", "multishot_snip", 0.2, 1, TINY)
    row = compute_cell(store, cell, log=lambda s: None)
    ticket = cell_ticket(store.run(cell.hash), log=lambda s: None)
    assert ticket["mask"].density == row["density"] and ticket["input_dim"] == 2 and ticket["hidden"] == [30]
    params = dict(ticket["model"].named_parameters())
    assert set(ticket["mask"]) == set(params)  # weights and biases: the pool prunes both
    assert all(not params[n][~keep].any() for n, keep in ticket["mask"].items())  # pruned entries exactly 0

    real = benchmark.run_cell

    def other_arithmetic(*args, **kwargs):
        out = real(*args, **kwargs)
        return {**out, "weak": out["weak"] + 1e-9}

    monkeypatch.setattr(benchmark, "run_cell", other_arithmetic)
    with pytest.raises(ValueError, match="does not reproduce its stored row"):
        cell_ticket(store.run(cell.hash), log=lambda s: None)
    incomplete = PlantCell("circle", "random", 0.2, 1, TINY)
    store.open_run(incomplete)  # its folder and config, no summary: as a killed computation leaves it
    with pytest.raises(ValueError, match="not complete"):
        cell_ticket(store.run(incomplete.hash), log=lambda s: None)

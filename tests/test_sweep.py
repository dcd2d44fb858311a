"""ticketlab sweep: specs expand to the single commands' configs; a sweep on the local process pool
(and on a local Ray instance) gives the runs' results bit for bit; a killed worker's run is retried
and resumes; a finished sweep recomputes nothing; a user error is reported once; a run locked by
another process is waited for; the index stays consistent under concurrent writers."""
from __future__ import annotations

import argparse
import json
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from ticketlab.cli import build_parser, config_from_args
from ticketlab.config import ConfigError, config_hash
from ticketlab.experiments.prune_at_init import run_prune_at_init
from ticketlab.store import Store, index_fields
from ticketlab.sweep import (FAULT_ENV, SweepSpec, add_sweep_parser, choose_parallelism, execute, expand, load_spec,
                             run_sweep, spec_from_argv, spec_from_dict)

from faults import timing_free

# 8 tiny prune-at-init runs on digits (about a second each): 2 methods x 2 densities x 2 seeds
MODEL = ["--model", "mlp", "--model-option", "hidden=[16]", "--optimizer", "adam", "--lr", "0.01", "--batch-size", "64",
         "--steps", "2ep", "--eval-every", "1ep"]
FIXED = ["--dataset", "digits", *MODEL]
GRID = ["--method", "magnitude", "random", "--density", "0.3", "0.1", "--seed", "0", "1"]


def spec(extra: list[str] | None = None) -> SweepSpec:
    return spec_from_argv("prune", FIXED + (extra if extra is not None else GRID))


def quiet(_: str) -> None:
    pass


def contents(folder: Path) -> dict[str, Any]:
    """A run folder's results: summaries and metrics (timing aside), tensors as bytes."""
    from safetensors.torch import load

    out: dict[str, Any] = {}
    for path in sorted(folder.rglob("*")):
        rel = str(path.relative_to(folder))
        if not path.is_file() or path.name.startswith(".") or rel in ("environment.json", "report.md", "report.png"):
            continue
        data = path.read_bytes()
        if path.suffix == ".json":
            out[rel] = timing_free(json.loads(data))
        elif path.suffix == ".jsonl":
            out[rel] = timing_free([json.loads(line) for line in data.splitlines() if line.strip()])
        elif path.suffix == ".safetensors":
            out[rel] = {k: v.numpy().tobytes() for k, v in load(data).items()}
        else:
            out[rel] = data
    return out


def mtimes(root: Path) -> dict[str, int]:
    return {str(p.relative_to(root)): p.stat().st_mtime_ns for p in root.rglob("*")
            if p.is_file() and "sweeps" not in p.parts and p.name != "index.sqlite"}


# Every sweep here runs on the CPU, like the reference: on a GPU machine the default device is the
# GPU, whose numbers differ from the CPU's (seen on the lent H200 machine: 3 failures before).
@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Store:
    """The 8 runs one by one in this process (one thread, see conftest.py)."""
    store = Store(tmp_path_factory.mktemp("one_by_one"))
    for run in expand(spec()):
        run_prune_at_init(run.config, store, device="cpu", progress=False, log=quiet)
    return store


@pytest.fixture(scope="module")
def pooled(tmp_path_factory) -> tuple[Store, Any]:
    """The same 8 runs as a sweep on the local pool: 2 workers x 1 thread."""
    store = Store(tmp_path_factory.mktemp("pool"))
    lines: list[str] = []
    result = run_sweep(spec(), store.root, workers=2, threads=1, device="cpu", print_fn=lines.append)
    return store, result, lines


# --- specs ----------------------------------------------------------------------------------------
def test_cli_values_make_axes_and_each_run_is_the_single_commands_run():
    runs = expand(spec())
    assert len(runs) == 8
    assert [r.values for r in runs[:3]] == [{"method": "magnitude", "density": "0.3", "seed": "0"},
                                            {"method": "magnitude", "density": "0.3", "seed": "1"},
                                            {"method": "magnitude", "density": "0.1", "seed": "0"}]
    for run in (runs[0], runs[-1]):  # the hash `ticketlab prune ...` gives for the same options
        single = config_from_args(build_parser().parse_args(["prune", *run.argv]))
        assert config_hash(single) == run.hash == config_hash(run.config)
    # an option taking several values (--milestones) or repeating (--model-option) is not an axis
    s = spec_from_argv("imp", ["--dataset", "digits", "--baselines", "reinit", "random", "--model-option",
                               "hidden=[8]", "--data-option", "size=8", "--seed", "0", "--seed", "1"])
    assert [k for k, _ in s.axes] == ["seed"]
    assert ("--baselines", "reinit", "random") in s.fixed
    assert len(expand(s)) == 2


def test_toml_spec_gives_the_same_runs(tmp_path):
    (tmp_path / "s.toml").write_text(
        'procedure = "prune"\nname = "tiny"\n'
        '[options]\ndataset = "digits"\nmodel = "mlp"\nmodel_option = {hidden = [16]}\noptimizer = "adam"\n'
        'lr = 0.01\nbatch-size = 64\nsteps = "2ep"\neval_every = "1ep"\n'
        '[grid]\nmethod = ["magnitude", "random"]\ndensity = [0.3, 0.1]\nseed = [0, 1]\n')
    toml = load_spec(tmp_path / "s.toml")
    assert toml.name == "tiny"
    assert [r.hash for r in expand(toml)] == [r.hash for r in expand(spec())]
    # cases (lists) crossed with the grid; a switch; the preset as an axis works like any option
    s = spec_from_dict({"procedure": "prune", "options": {"dataset": "digits", "model": "mlp", "density": 0.5,
                                                           "prune_first": False},
                        "grid": {"seed": [0, 1]},
                        "cases": [{"method": "snip"}, {"method": "synflow", "rounds": 3}]})
    runs = expand(s)
    assert [(r.values["method"], r.values["seed"]) for r in runs] == [("snip", "0"), ("snip", "1"),
                                                                      ("synflow", "0"), ("synflow", "1")]
    assert runs[2].config.rounds == 3 and runs[0].config.include_first is False


def test_bad_specs_are_config_errors_before_anything_runs(tmp_path):
    with pytest.raises(ConfigError, match="no option --densty"):
        spec_from_argv("prune", ["--densty", "0.1"])
    with pytest.raises(ConfigError, match="unknown procedure"):
        spec_from_argv("prunes", [])
    with pytest.raises(ConfigError, match="has no option 'lrate'"):
        spec_from_dict({"procedure": "prune", "options": {"lrate": 1}})
    with pytest.raises(ConfigError, match=r"(?s)2 combination\(s\).*density=1.5"):
        expand(spec(["--method", "snip", "--density", "0.5", "1.5", "--seed", "0", "1"]))
    with pytest.raises(ConfigError, match="required: --method"):
        expand(spec(["--density", "0.5"]))
    (tmp_path / "bad.toml").write_text("procedure = [")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_spec(tmp_path / "bad.toml")


@pytest.mark.parametrize("name", ["sparse_lenet_mnist", "pai_lenet_mnist"])
def test_benchmark_grids_as_sweep_specs_give_the_same_runs(name, monkeypatch):
    """benchmarks/sweeps/*.toml are the grids of the benchmark scripts, hash for hash."""
    import importlib

    benchmarks = Path(__file__).resolve().parent.parent / "benchmarks"
    monkeypatch.syspath_prepend(str(benchmarks))
    script = importlib.import_module(name)
    ours = [r.hash for r in expand(load_spec(benchmarks / "sweeps" / f"{name}.toml"))]
    theirs = [config_hash(c) for c in script.configs("../shared/data/mnist", 10, 3)]
    assert len(ours) == len(set(ours)) and sorted(ours) == sorted(theirs)


def test_workers_and_threads_from_cores_and_model_size():
    assert choose_parallelism(8, 2_410, cores=2) == (2, 1)          # small model: one thread, a worker per core
    assert choose_parallelism(1, 2_410, cores=16) == (1, 1)         # never more workers than runs
    assert choose_parallelism(8, 15_000_000, cores=16) == (4, 4)    # VGG-16: 4 threads each
    assert choose_parallelism(2, 15_000_000, cores=16) == (2, 4)
    assert choose_parallelism(8, 2_410, cores=16, workers=3) == (3, 1)
    assert choose_parallelism(8, 2_410, cores=16, threads=4) == (4, 4)
    assert choose_parallelism(8, None, cores=2, workers=2, threads=1) == (2, 1)
    with pytest.raises(ConfigError):
        choose_parallelism(8, 2_410, cores=2, workers=0)


# --- the local pool -------------------------------------------------------------------------------
def test_pool_sweep_gives_the_runs_one_by_one_bit_for_bit(reference, pooled):
    store, result, lines = pooled
    assert result.complete and result.computed == 8 and (result.workers, result.threads) == (2, 1)
    assert sum(line.startswith("[") for line in lines) == 8 and any(line.startswith("[8/8]") for line in lines)
    for rec in result.records:
        assert contents(store.root / rec["hash"]) == contents(reference.root / rec["hash"]), rec["values"]
        env = store.run(rec["hash"]).read_json("environment.json")
        assert rec["threads"] == env["first_session"]["threads"] == 1  # threads recorded with the run
    doc = json.loads((result.folder / "sweep.json").read_text())
    assert doc["hashes"] == [r.hash for r in expand(spec())] and doc["complete"]
    assert (result.folder / "report.md").exists() and (result.folder / "report.png").exists()
    assert "| magnitude |" in (result.folder / "report.md").read_text()
    # the index, written by two processes at once, says what the run folders say
    rows = {r["hash"]: r for r in store.list()}
    assert set(rows) == set(doc["hashes"])
    for h, row in rows.items():
        assert row["status"] == "complete"
        assert row["summary"] == json.loads(json.dumps(index_fields(store.run(h).read_json("summary.json"))))


def test_rerunning_a_finished_sweep_recomputes_nothing(pooled):
    store, first, _ = pooled
    before = mtimes(store.root)
    result = run_sweep(spec(), store.root, workers=2, threads=1, device="cpu", print_fn=None)
    assert result.complete and result.computed == 0 and result.reused == 8
    assert [r["summary"] for r in result.records] == [r["summary"] for r in first.records]
    assert mtimes(store.root) == before


def test_killed_worker_run_is_retried_and_resumes(reference, tmp_path, monkeypatch):
    runs = expand(spec())[:3]
    victim = runs[1].hash
    # the worker running `victim` dies right after writing its first mid-training checkpoint
    monkeypatch.setenv(FAULT_ENV, f"{victim}:checkpoint.safetensors")
    lines: list[str] = []
    result = run_sweep(spec(), tmp_path, workers=2, threads=1, device="cpu", runs=runs, print_fn=lines.append, report=False)
    assert result.complete, lines
    rec = next(r for r in result.records if r["hash"] == victim)
    assert rec["attempts"] == 2 and rec["resumed"] and rec["crashes"], rec
    assert (tmp_path / f".sweep-fault-{victim}").exists()  # the fault did fire
    assert any("retrying" in line for line in lines)
    log = (result.folder / "logs" / f"{victim}.log").read_text()
    assert "attempt 1" in log and "attempt 2" in log
    for r in runs:  # the resumed run ends exactly where the uninterrupted one did
        assert contents(tmp_path / r.hash) == contents(reference.root / r.hash)


def test_a_pool_broken_between_two_polls_is_made_anew_at_the_next_submit(monkeypatch):
    """A worker may die after a poll returned another run's result and before the next submit: the
    pool's submit then raises BrokenProcessPool (seen on a 16-core machine). The runs in flight are
    collected (the dead one as Crashed, to be retried), a new pool takes the task, and the next poll
    returns them all."""
    import concurrent.futures
    from concurrent.futures import Future
    from concurrent.futures.process import BrokenProcessPool

    from ticketlab.sweep import Crashed, _PoolBackend

    class BrokenPool:
        down = False

        def submit(self, fn, task):
            raise BrokenProcessPool("A child process terminated abruptly")

        def shutdown(self, wait, cancel_futures):
            BrokenPool.down = True

    class FreshPool:
        def submit(self, fn, task):
            f = Future()
            f.set_result({"hash": task["hash"], "status": "complete"})
            return f

    monkeypatch.setattr(concurrent.futures, "ProcessPoolExecutor", lambda *a, **k: FreshPool())
    died, finished = Future(), Future()
    died.set_exception(BrokenProcessPool("worker died"))
    finished.set_result({"hash": "b", "status": "complete"})
    backend = _PoolBackend(2)
    backend.pool = BrokenPool()
    backend.inflight = {died: {"hash": "a"}, finished: {"hash": "b"}}
    backend.submit({"hash": "c"})
    assert BrokenPool.down and isinstance(backend.pool, FreshPool)
    assert [t["hash"] for t in backend.inflight.values()] == ["c"]
    outcomes = {task["hash"]: result for task, result in backend.poll(0)}
    assert isinstance(outcomes["a"], Crashed) and outcomes["b"]["status"] == outcomes["c"]["status"] == "complete"
    assert backend.poll(0) == [] and not backend.inflight


def test_user_error_is_reported_once_not_retried_and_exit_code_says_so(tmp_path, capsys):
    parser = argparse.ArgumentParser(prog="ticketlab")
    add_sweep_parser(parser.add_subparsers(dest="command"))
    argv = ["sweep", "prune", *MODEL, "--method", "magnitude", "--density", "0.3",
            "--dataset", "digits", "mnist", "--data-root", str(tmp_path / "no-such-folder"),
            "--runs-dir", str(tmp_path / "runs"), "--workers", "2"]
    args = parser.parse_args(argv)
    assert args.func(args) == 1
    out = capsys.readouterr().out
    doc = json.loads(next((tmp_path / "runs" / "sweeps").glob("*/sweep.json")).read_text())
    bad = [r for r in doc["runs"] if r["status"] != "complete"]
    assert len(bad) == 1 and bad[0]["values"]["dataset"] == "mnist"
    assert bad[0]["status"] == "error" and bad[0]["error"] == "DataError" and bad[0]["attempts"] == 1
    assert out.count(f"NOT COMPLETE {bad[0]['hash']}") == 1 and "retrying" not in out
    assert "| digits |" in out  # the report of the runs that completed


def test_a_run_locked_by_another_process_is_waited_for(tmp_path):
    store = Store(tmp_path)
    only = expand(spec())[:1]
    run = store.open_run(only[0].config)
    task = {"procedure": "prune", "config": only[0].config, "hash": only[0].hash, "runs_dir": str(tmp_path),
            "threads": 1}
    results: list[Any] = []
    with store.lock(run):  # another writer holds the run
        assert execute(task)["status"] == "busy"  # a worker that claims it anyway is told, and runs nothing
        t = threading.Thread(target=lambda: results.append(
            run_sweep(spec(), tmp_path, workers=1, threads=1, device="cpu", runs=only, print_fn=None, report=False,
                      poll_seconds=0.2)))
        t.start()
        time.sleep(2.0)
        assert t.is_alive() and not results  # waiting, not failed, not running it twice
        assert not (run.path / "summary.json").exists()
    t.join(120)
    (result,) = results
    assert result.complete and result.records[0]["waited"] and result.records[0]["attempts"] == 1


def test_a_run_folder_created_by_two_processes_at_once_is_claimed_again(tmp_path, monkeypatch):
    """Store.open_run writes a new run's config.json without a lock: a second process creating the
    same run at that moment removes the first one's temp file. The worker claims the run again once
    config.json is there; any other missing file is an error, reported once."""
    import dataclasses

    from ticketlab.experiments import registry

    only = expand(spec())[0]
    Store(tmp_path).open_run(only.config)  # config.json in place, written by "the other process"
    real = registry.EXPERIMENTS["prune"]
    calls: list[str] = []

    def racing(name: str):
        def run(config, store, **kwargs):
            calls.append(name)
            if len(calls) == 1:
                raise FileNotFoundError(2, "No such file or directory", str(tmp_path / only.hash / name))
            return real.run(config, store, **kwargs)
        return run

    task = {"procedure": "prune", "config": only.config, "hash": only.hash, "runs_dir": str(tmp_path), "threads": 1}
    monkeypatch.setitem(registry.EXPERIMENTS, "prune", dataclasses.replace(real, run=racing(".config.json.x1.tmp")))
    assert execute(task)["status"] == "complete" and len(calls) == 2
    calls.clear()
    monkeypatch.setitem(registry.EXPERIMENTS, "prune", dataclasses.replace(real, run=racing("data.bin")))
    other = expand(spec())[1]
    out = execute({**task, "config": other.config, "hash": other.hash})
    assert out["status"] == "error" and out["error"] == "FileNotFoundError" and len(calls) == 1


def test_two_sweeps_sharing_runs_on_one_store(reference, tmp_path):
    """Two sweeps (two pools) at once on one store, with two runs in common: every run ends complete
    and exactly as when run alone, each computed by exactly one of them (the other waits, or finds
    it complete, and reuses it),
    and the index written by all those processes lists each run once, complete."""
    runs = expand(spec())[:4]
    shares = {"a": runs[0:3], "b": runs[1:4][::-1]}
    results: dict[str, Any] = {}

    def sweep(key: str) -> None:
        results[key] = run_sweep(spec(), tmp_path, workers=1, threads=1, device="cpu", runs=shares[key], print_fn=None,
                                 report=False, out=tmp_path / "sweeps" / key, poll_seconds=0.2)

    workers = [threading.Thread(target=sweep, args=(k,)) for k in shares]
    for t in workers:
        t.start()
    for t in workers:
        t.join(300)
    assert results["a"].complete and results["b"].complete, [r for res in results.values() for r in res.records]
    computed = [r["hash"] for res in results.values() for r in res.records if r["status"] == "complete"]
    assert sorted(computed) == sorted(r.hash for r in runs)  # each run computed by exactly one of them
    for r in runs:
        assert contents(tmp_path / r.hash) == contents(reference.root / r.hash)
    rows = Store(tmp_path).list()
    assert sorted(row["hash"] for row in rows) == sorted(r.hash for r in runs)
    assert all(row["status"] == "complete" for row in rows)


# --- Ray ------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def ray_instance():
    ray = pytest.importorskip("ray")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, object_store_memory=80 * 1024 * 1024)
    yield ray
    ray.shutdown()


def test_ray_sweep_same_results_and_a_crashed_task_resumes(reference, ray_instance, tmp_path, monkeypatch):
    runs = expand(spec())
    victim = runs[5].hash
    monkeypatch.setenv(FAULT_ENV, f"{victim}:checkpoint.safetensors")
    lines: list[str] = []
    result = run_sweep(spec(), tmp_path, backend="ray", threads=1, device="cpu", print_fn=lines.append)
    assert result.complete and result.computed == 8, lines
    rec = next(r for r in result.records if r["hash"] == victim)
    assert rec["attempts"] == 2 and rec["resumed"] and "Ray" in rec["crashes"][0]
    for r in runs:
        assert contents(tmp_path / r.hash) == contents(reference.root / r.hash), r.values
    again = run_sweep(spec(), tmp_path, backend="ray", threads=1, device="cpu", print_fn=None, report=False)
    assert again.computed == 0 and again.reused == 8


# --- --stack: the runs that differ only in their seed as one stacked model ------------------------
def test_stacked_sweep_runs_are_the_seeds_runs_and_train_together(tmp_path, capsys):
    from ticketlab.cli import main
    from ticketlab.sweep import stack_groups, stacked_runs

    runs = stacked_runs("prune", expand(spec()))
    groups = stack_groups(runs)
    assert len(runs) == 8 and [len(g) for g in groups] == [8]  # methods, densities and seeds in one stack
    assert all(r.config.train.numerics == "stacked" for r in runs)
    lines: list[str] = []
    result = run_sweep(spec(), tmp_path / "a", workers=2, threads=1, device="cpu", print_fn=lines.append, stack=True)
    assert result.complete and result.computed == 8, lines
    assert sum(line.startswith("[") for line in lines) == 8
    assert all(rec.get("stacked_with") == 4 for rec in result.records)  # one stack per worker: 2 of 4
    # each run is the single command's --seeds run: same hash, same files
    first = runs[0].config
    argv = ["prune", *FIXED, "--method", first.method, "--density", str(first.density), "--seeds", "0", "1",
            "--runs-dir", str(tmp_path / "b"), "--no-progress", "--threads", "1", "--device", "cpu"]  # the sweep's device
    assert main(argv) == 0
    same_setting = [r for r in runs if (r.config.method, r.config.density) == (first.method, first.density)]
    assert len(same_setting) == 2
    for r in same_setting:
        assert contents(tmp_path / "a" / r.hash) == contents(tmp_path / "b" / r.hash)
    again = run_sweep(spec(), tmp_path / "a", workers=2, threads=1, device="cpu", print_fn=None, stack=True)
    assert again.complete and again.computed == 0 and again.reused == 8
    with pytest.raises(ConfigError, match="--stack: ticketlab strong has no stacked runs"):
        stacked_runs("strong", [])


def test_a_killed_stack_is_retried_and_ends_as_an_unkilled_one(tmp_path, monkeypatch):
    from ticketlab.sweep import stack_groups, stacked_runs

    group = stack_groups(stacked_runs("prune", expand(spec())))[0][:3]
    clean = run_sweep(spec(), tmp_path / "clean", workers=1, threads=1, device="cpu", runs=group, print_fn=None, report=False,
                      stack=True)
    assert clean.complete
    # the worker dies right after the stack wrote the first run's unit summary (the second run's is not written)
    monkeypatch.setenv(FAULT_ENV, f"{group[0].hash}:summary.json")
    lines: list[str] = []
    result = run_sweep(spec(), tmp_path / "killed", workers=1, threads=1, device="cpu", runs=group, print_fn=lines.append,
                       report=False, stack=True)
    assert result.complete and any("retrying" in line for line in lines), lines
    assert all(rec["attempts"] == 2 for rec in result.records)
    for r in group:
        assert contents(tmp_path / "killed" / r.hash) == contents(tmp_path / "clean" / r.hash)


def test_a_stack_that_fails_as_a_whole_reports_each_of_its_runs(tmp_path):
    from ticketlab.sweep import stack_groups, stacked_runs

    group = stack_groups(stacked_runs("prune", expand(spec())))[0][:2]
    foreign = tmp_path / group[1].hash
    foreign.mkdir(parents=True)
    (foreign / "config.json").write_text("{not json")  # a damaged file in one run of the stack: reported, not used
    lines: list[str] = []
    result = run_sweep(spec(), tmp_path, workers=1, threads=1, device="cpu", runs=group, print_fn=lines.append, report=False,
                       stack=True)
    assert not result.complete
    assert [rec["status"] for rec in result.records] == ["error", "error"], result.records
    assert "config.json" in result.records[1]["message"]
    assert sum(line.startswith("[") for line in lines) == 2 and any(line.startswith("[2/2]") for line in lines)
    assert (foreign / "config.json").read_text() == "{not json"

"""One self-contained HTML report of a set of stored runs of any kinds (``ticketlab report ... --html``).

``report.html`` opens offline in any browser: no network, no JavaScript, the plots embedded as
base64 PNG, every table a real HTML table carrying the same numbers as ``report.md``. It holds

- a header: ticketlab version, when it was written, how many runs, the command that wrote it;
- "Can I trust this?": one line per run (hash, kind, status, data, model, seed, density, test
  accuracy, warnings) and every warning of every run in one box at the top;
- per kind of run, the tables and plots of that kind's own report function (the experiment
  records of ``experiments/registry.py``; the same markdown as ``report.md``, converted);
- per run, its details: status, config (hash, data, model, seed, training), environment (threads,
  library versions, later sessions), per-layer densities, and the full ``config.json``.

Warnings are what a reader must know before believing a number: a run that is incomplete (and
which of its units stopped midway), still running, or diverged; stored files that fail their
checksum (``Run.verify``, what ``ticketlab verify`` checks); units with collapsed layers or an
effective density well below the density (kept weights on no input-to-output path); non-finite
accuracies; a run continued under another environment; a run left out of its kind's tables
because its report could not be computed.
"""
from __future__ import annotations

import base64
import datetime as _dt
import html
import json
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# a unit whose effective density is below this fraction of its density is flagged: most of its kept
# weights lie on no input-to-output path (the tables give every unit's effective density)
EFFECTIVE_DENSITY_WARNING = 0.5
# where a run's headline numbers are, in order of preference (the index's columns)
ACCURACY_KEYS = ("final_test_accuracy", "ticket_test_accuracy", "test_accuracy", "dense_test_accuracy")
DENSITY_KEYS = ("density", "ticket_density")


@dataclass
class RunFacts:
    """What the report says about one run besides its kind's tables."""

    hash: str
    kind: str
    status: str                                    # complete, incomplete or running
    detail: str = ""                               # the index's status where it says more (interrupted, diverged)
    config: dict[str, Any] = field(default_factory=dict)
    summary: dict[str, Any] = field(default_factory=dict)    # index fields (headline numbers)
    environment: dict[str, Any] = field(default_factory=dict)
    # per unit: its label, layer densities, density and effective density
    layers: list[tuple[str, dict[str, float], Any, Any]] = field(default_factory=list)
    files_checked: int = 0
    warnings: list[str] = field(default_factory=list)


@dataclass
class KindSection:
    kind: str
    runs: list[str]
    markdown: str
    plots: list[Path]
    error: str = ""


# --- facts about one run -----------------------------------------------------------------------------

def _number(x: Any) -> float | None:
    return float(x) if isinstance(x, (int, float)) and not isinstance(x, bool) else None


def _walk(obj: Any, where: str):
    """Every dict inside a JSON value, with a label of where it is (list rows by position)."""
    if isinstance(obj, dict):
        yield where, obj
        for k, v in obj.items():
            if isinstance(v, (dict, list)) and k not in ("layer_density", "files"):
                yield from _walk(v, f"{where}.{k}" if where else k)
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            yield from _walk(v, f"{where}[{i}]")


def _row_label(d: dict[str, Any]) -> str:
    """A row of a summary's list named by its identifying fields (level 2 ticket, seed 0 ga, ...)."""
    parts = [f"{k} {d[k]}" for k in ("level", "branch", "seed", "method", "role", "kept", "criterion", "reset", "mask0",
                                     "variant") if k in d and isinstance(d[k], (str, float, int))
             and not (k == "kept" and isinstance(d[k], int))]  # a unit's kept count is no name
    return ", ".join(parts)


def _dead(density: float | None, eff: float | None) -> str:
    if density is None or eff is None:
        return f"effective density {_fmt(eff)} of density {_fmt(density)}"
    return (f"effective density {_fmt(eff)} of density {_fmt(density)}"
            + (f", {100 * (1 - eff / density):.0f}% of the kept weights dead" if density else ""))


def _listed(items: Sequence[str], limit: int = 5) -> str:
    return "; ".join(items[:limit]) + (f"; and {len(items) - limit} more (see the run's per-layer densities)"
                                       if len(items) > limit else "")


def _unit_findings(run: Any, facts: RunFacts) -> None:
    """Collapsed layers, low effective density, non-finite accuracies and per-layer densities of
    every unit summary of the run (and the rows of its summary), each unit once; one warning per
    run and kind of finding, its worst units first."""
    files = sorted(run.path.rglob("summary.json"), key=lambda p: (-len(p.relative_to(run.path).parts), str(p)))
    if run.file("levels.jsonl").exists():
        files.append(run.file("levels.jsonl"))  # an incomplete IMP run's finished levels
    seen: set[Any] = set()
    collapsed_units: list[tuple[str, list[str], float | None, float | None]] = []
    dead_units: list[tuple[float, str]] = []
    for path in files:
        rel = path.parent.relative_to(run.path).as_posix()
        try:
            data: Any = run.read_jsonl("levels.jsonl") if path.name == "levels.jsonl" else run.read_json(
                *path.relative_to(run.path).parts)
        except Exception:  # noqa: BLE001 (a damaged file is reported by the checksum check)
            continue
        for where, d in _walk(data, ""):
            name, row = (rel if rel != "." else ""), _row_label(d) or where
            label = f"{name} ({row})" if name and row else name or row or "run"
            collapsed = list(d.get("collapsed_layers") or [])
            density, eff = _number(d.get("density")), _number(d.get("effective_density"))
            key = (tuple(sorted(collapsed)), density, eff, _number(d.get("final_test_accuracy")))
            if key in seen:  # the same unit seen again (IMP's levels.jsonl repeats its units' summaries)
                continue
            seen.add(key)
            if isinstance(d.get("layer_density"), dict):
                facts.layers.append((label, d["layer_density"], density, eff))
            if collapsed:
                collapsed_units.append((label, collapsed, density, eff))
            elif density and eff is not None and eff < EFFECTIVE_DENSITY_WARNING * density:
                dead_units.append((eff / density, f"{label}: {_dead(density, eff)}"))
            for k in ACCURACY_KEYS:
                v = _number(d.get(k))
                if v is not None and not math.isfinite(v):
                    facts.warnings.append(f"{label}: {k.replace('_', ' ')} is {v} (training diverged?)")
    if collapsed_units:
        facts.warnings.append(
            f"collapsed layers (no kept weight on any input-to-output path) in {len(collapsed_units)} unit(s): "
            + _listed([f"{label}: {', '.join(layers)} ({_dead(density, eff)})"
                       for label, layers, density, eff in collapsed_units]))
    if dead_units:
        facts.warnings.append(
            f"most kept weights are dead (on no input-to-output path) in {len(dead_units)} unit(s): "
            + _listed([text for _, text in sorted(dead_units, key=lambda x: x[0])]))


def _incomplete_units(run: Any) -> list[str]:
    """Units that stopped midway: a checkpoint left behind, or weights / metrics without the
    summary that is written last."""
    out = []
    for folder in sorted({p.parent for p in run.path.rglob("*") if p.is_file()
                          and p.name in ("checkpoint.safetensors", "metrics.jsonl", "final.safetensors")}):
        if (folder / "summary.json").exists() or folder == run.path:
            continue
        rel = folder.relative_to(run.path).as_posix()
        out.append(f"{rel} (unfinished: a checkpoint is left, from which the same command continues it)"
                   if (folder / "checkpoint.safetensors").exists() else f"{rel} (unfinished: it has no summary.json)")
    return out


def run_facts(store: Any, run_hash: str, index: dict[str, dict[str, Any]] | None = None) -> RunFacts:
    """Status, config, environment and warnings of one stored run."""
    from ..store import index_fields

    run = store.run(run_hash)
    row = (index if index is not None else {r["hash"]: r for r in store.list()}).get(run.hash, {})
    facts = RunFacts(hash=run.hash, kind="?", status="incomplete")
    try:
        described = run.read_json("config.json")
        facts.kind, facts.config = described.get("experiment", "?"), described.get("config", {})
    except Exception as exc:  # noqa: BLE001
        facts.warnings.append(f"config.json cannot be read: {exc}")
    problems = run.verify()
    facts.files_checked = sum(1 for p in run.path.rglob("*") if p.is_file() and not p.name.startswith(".")
                              and p.suffix in (".json", ".jsonl", ".safetensors"))  # what carries a checksum
    for p in problems:
        facts.warnings.append(f"checksum failure: {p.path.relative_to(run.path)}: {p.problem} "
                              "(`ticketlab verify` lists every damaged file; rerun the command to recompute it)")
    try:
        complete = run.complete_summary()
    except Exception:  # noqa: BLE001 (a damaged summary.json, reported above)
        complete = None
    if complete is not None:
        facts.status, facts.summary = "complete", index_fields(complete)
    else:
        facts.status = "running" if store.is_being_written(run.hash) else "incomplete"
        facts.detail = row.get("status") or ""
        facts.summary = dict(row.get("summary") or {})
        if not facts.summary and run.file("levels.jsonl").exists():
            try:
                facts.summary = index_fields({"levels": run.read_jsonl("levels.jsonl")})
            except Exception:  # noqa: BLE001
                pass
        missing: list[str] = []
        if run.file("summary.json").exists() and not problems:
            try:
                missing = [f for f in run.read_json("summary.json").get("files", []) if not run.file(f).exists()]
            except Exception:  # noqa: BLE001
                pass
        if facts.status == "running":
            facts.warnings.append("running: another process is writing this run now; its numbers may still change")
        elif missing:
            facts.warnings.append(f"incomplete: {len(missing)} file(s) its summary lists are missing "
                                  f"({', '.join(missing[:5])}{', ...' if len(missing) > 5 else ''}); the same "
                                  "command recomputes them")
        elif facts.detail == "diverged":
            facts.warnings.append("diverged: training stopped on a non-finite loss or weights; the tables show only "
                                  "the units finished before")
        else:
            facts.warnings.append("incomplete: the run stopped before it finished (interrupted or killed); the tables "
                                  "show only the units finished so far; the same command continues it")
    for unit in _incomplete_units(run):
        facts.warnings.append(f"incomplete unit: {unit}")
    if run.file("environment.json").exists():
        try:
            env = run.read_json("environment.json")
            facts.environment = env
            first = env.get("first_session", {})
            for later in env.get("later_sessions", []):
                changed = ", ".join(f"{k} {first.get(k)} -> {v}" for k, v in later.items() if first.get(k) != v)
                if changed:
                    facts.warnings.append(f"continued under another environment ({changed}); numbers computed after "
                                          "that may differ from an uninterrupted run")
        except Exception:  # noqa: BLE001
            pass
    _unit_findings(run, facts)
    return facts


# --- the kinds' own reports ------------------------------------------------------------------------------

def kind_sections(store: Any, facts: Sequence[RunFacts], out: Path) -> list[KindSection]:
    """Each kind's report (its record's ``report(runs, plot)``) over its runs, plots written in
    ``out`` under the names ``ticketlab report`` gives them (report.png for the first kind,
    report_<kind>.png for a later one). A run whose report cannot be computed (an incomplete run
    without the files its kind reads) is left out with a warning; the others are still reported."""
    from ..config import ConfigError
    from ..experiments.registry import EXPERIMENTS, experiment_of

    by_kind: dict[str, list[RunFacts]] = {}
    for f in facts:
        if f.kind != "?":  # a run whose config.json cannot be read (its warning says so) has no kind to report it
            by_kind.setdefault(f.kind, []).append(f)
    known = list(dict.fromkeys(e.config_cls.experiment for e in EXPERIMENTS.values()))
    for kind in by_kind:
        if kind in ("plant", "plant-study"):
            raise ConfigError("plant studies and cells have a report of their own (`ticketlab report` without --html); "
                              "the HTML report covers the stored-run commands")
    records = {kind: experiment_of(kind) for kind in by_kind}  # an unknown kind fails before anything is written
    sections = []
    for i, kind in enumerate(sorted(by_kind, key=known.index)):
        plot = out / ("report.png" if i == 0 else f"report_{kind}.png")
        members = by_kind[kind]
        tries = [members]
        if any(f.status != "complete" for f in members):
            tries.append([f for f in members if f.status == "complete"])
        error = ""
        for chosen in tries:
            if not chosen:
                continue
            try:
                text, pngs = records[kind].report([store.run(f.hash) for f in chosen], plot)
            except Exception as exc:  # noqa: BLE001 (reported in the page, never a traceback)
                error = f"{type(exc).__name__}: {exc}"
                continue
            for f in members:
                if f.hash not in {c.hash for c in chosen}:
                    f.warnings.append(f"left out of the {kind} tables and plots: its report cannot be computed from "
                                      f"what is stored yet ({error})")
            sections.append(KindSection(kind, [f.hash for f in chosen], text, list(pngs)))
            break
        else:
            for f in members:
                f.warnings.append(f"no {kind} report: {error}")
            sections.append(KindSection(kind, [], "", [], error=error))
    return sections


# --- markdown to HTML --------------------------------------------------------------------------------------

_NUMBER = re.compile(r"^[-+]?(\d+(\.\d*)?|\.\d+)([eE][-+]?\d+)?%?$")


def _inline(text: str) -> str:
    """Escaped text with `code` and **bold** spans."""
    out = html.escape(text, quote=False)
    out = re.sub(r"`([^`]+)`", r"<code>\1</code>", out)
    return re.sub(r"\*\*([^*]+)\*\*", r"<strong>\1</strong>", out)


def _cells(line: str) -> list[str]:
    s = line.strip()
    s = s[1:] if s.startswith("|") else s
    s = s[:-1] if s.endswith("|") else s
    return [c.strip() for c in s.split("|")]


def _table(lines: list[str]) -> str:
    rows = [_cells(line) for line in lines]
    head, body = rows[0], rows[1:]
    if body and all(re.fullmatch(r":?-+:?", c) for c in body[0] if c):
        body = body[1:]
    out = ['<div class="scroll"><table>',
           "<thead><tr>" + "".join(f"<th>{_inline(c)}</th>" for c in head) + "</tr></thead>", "<tbody>"]
    for row in body:
        out.append("<tr>" + "".join(f'<td class="num">{_inline(c)}</td>' if _NUMBER.match(c)
                                    else f"<td>{_inline(c)}</td>" for c in row) + "</tr>")
    out += ["</tbody>", "</table></div>"]
    return "\n".join(out)


def markdown_to_html(text: str, heading_offset: int = 0) -> str:
    """The markdown the report functions write (headings, paragraphs, pipe tables) as HTML."""
    out: list[str] = []
    para: list[str] = []
    table: list[str] = []

    def flush() -> None:
        if para:
            out.append(f"<p>{_inline(' '.join(para))}</p>")
            para.clear()
        if table:
            out.append(_table(table))
            table.clear()

    for line in text.splitlines():
        stripped = line.strip()
        if stripped.startswith("|"):
            if para:
                flush()
            table.append(stripped)
            continue
        if table:
            flush()
        if not stripped:
            flush()
        elif m := re.match(r"^(#{1,6})\s+(.*)$", stripped):
            flush()
            level = min(6, len(m.group(1)) + heading_offset)
            out.append(f"<h{level}>{_inline(m.group(2))}</h{level}>")
        else:
            para.append(stripped)
    flush()
    return "\n".join(out)


# --- the page ------------------------------------------------------------------------------------------------

_CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 2em auto; max-width: 1400px;
       padding: 0 1em; color: #1b1b1b; line-height: 1.4; }
h1 { margin-bottom: 0.2em; } h2 { border-bottom: 2px solid #ddd; padding-bottom: 0.2em; margin-top: 2em; }
table { border-collapse: collapse; margin: 0.8em 0; font-size: 0.9em; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.6em; text-align: left; vertical-align: top; }
th { background: #f2f2f2; } td.num { text-align: right; font-variant-numeric: tabular-nums; }
table.meta th { width: 12em; }
code, pre { font-family: ui-monospace, "DejaVu Sans Mono", monospace; font-size: 0.9em; }
pre { background: #f7f7f7; padding: 0.8em; overflow-x: auto; }
figure { margin: 1em 0; } figure img { max-width: 100%; border: 1px solid #eee; }
figcaption { color: #555; font-size: 0.85em; }
.status { font-weight: bold; padding: 0.05em 0.5em; border-radius: 0.3em; white-space: nowrap; }
.status.complete { background: #dff3df; color: #1a5e1a; }
.status.incomplete { background: #fde2e1; color: #8a1c14; }
.status.running { background: #fff1c7; color: #7a5a00; }
.warnings { background: #fff4e5; border: 2px solid #e08a00; padding: 0.6em 1em; border-radius: 0.3em; }
.warnings li { margin: 0.2em 0; } .ok { background: #eef8ee; border: 2px solid #5aa85a; padding: 0.6em 1em; }
.error { background: #fde2e1; border: 2px solid #c0392b; padding: 0.6em 1em; }
.scroll { overflow-x: auto; } .scroll table { margin: 0; } .scroll { margin: 0.8em 0; }
article.run { border-top: 1px solid #ddd; margin-top: 1.5em; }
"""


def _fmt(x: Any) -> str:
    """A number as the markdown tables give it (4 decimals), anything else as text."""
    if x is None:
        return ""
    v = _number(x)
    if v is None:
        return str(x)
    if isinstance(x, int):
        return str(x)
    return f"{v:.4f}" if math.isfinite(v) else str(v)


def _first(d: dict[str, Any], keys: Sequence[str]) -> tuple[str, Any]:
    for k in keys:
        if k in d and d[k] is not None:
            return k, d[k]
    return "", None


def _named(d: Any) -> str:
    """``{"name": "mlp", "options": {"hidden": [16]}}`` as ``mlp (hidden=[16])``."""
    if not isinstance(d, dict):
        return "" if d is None else str(d)
    opts = d.get("options") or {}
    text = str(d.get("name", ""))
    return text + (f" ({', '.join(f'{k}={json.dumps(v)}' for k, v in opts.items())})" if opts else "")


def _seed(cfg: dict[str, Any]) -> str:
    if "seed" in cfg:
        return str(cfg["seed"])
    if "seeds" in cfg:
        return ", ".join(map(str, cfg["seeds"])) if isinstance(cfg["seeds"], list) else str(cfg["seeds"])
    return ""


def _status(f: RunFacts) -> str:
    extra = f" ({f.detail})" if f.status == "incomplete" and f.detail in ("interrupted", "diverged") else ""
    return f'<span class="status {f.status}">{f.status}{html.escape(extra)}</span>'


def _meta_table(rows: Sequence[tuple[str, str]]) -> str:
    return '<table class="meta">' + "".join(f"<tr><th>{html.escape(k)}</th><td>{v}</td></tr>" for k, v in rows) + \
        "</table>"


def _overview(facts: Sequence[RunFacts]) -> str:
    head = ["run", "kind", "status", "data", "model", "seed", "density", "test accuracy", "which accuracy",
            "files checked", "warnings"]
    out = ['<div class="scroll"><table id="runs-table">',
           "<thead><tr>" + "".join(f"<th>{h}</th>" for h in head) + "</tr></thead>", "<tbody>"]
    for f in facts:
        _, density = _first(f.summary, DENSITY_KEYS)
        acc_key, acc = _first(f.summary, ACCURACY_KEYS)
        cells = [f'<a href="#run-{f.hash}"><code>{f.hash}</code></a>', html.escape(f.kind), _status(f),
                 html.escape(_named(f.config.get("data"))), html.escape(_named(f.config.get("model"))),
                 html.escape(_seed(f.config))]
        cells += [f'<td class="num">{_fmt(density)}</td>', f'<td class="num">{_fmt(acc)}</td>',
                  html.escape(acc_key.replace("_", " ")), f'<td class="num">{f.files_checked}</td>',
                  f'<td class="num">{len(f.warnings)}</td>']
        out.append("<tr>" + "".join(c if c.startswith("<td") else f"<td>{c}</td>" for c in cells) + "</tr>")
    out += ["</tbody>", "</table></div>"]
    return "\n".join(out)


def _warnings_box(facts: Sequence[RunFacts]) -> str:
    flagged = [f for f in facts if f.warnings]
    if not flagged:
        return (f'<div class="ok" id="warnings">No warnings: all {len(facts)} run(s) complete, every stored file '
                "matches its checksum, no collapsed layer, no non-finite accuracy.</div>")
    items = "".join(f'<li><a href="#run-{f.hash}"><code>{f.hash}</code></a> ({html.escape(f.kind)}): '
                    f"{_inline(w)}</li>" for f in flagged for w in f.warnings)
    n = sum(len(f.warnings) for f in flagged)
    return (f'<div class="warnings" id="warnings"><strong>{n} warning(s) in {len(flagged)} of {len(facts)} run(s)'
            f"</strong> &mdash; read these before the numbers below.<ul>{items}</ul></div>")


def _figure(png: Path) -> str:
    data = base64.b64encode(Path(png).read_bytes()).decode("ascii")
    name = html.escape(Path(png).name)
    return f'<figure><img src="data:image/png;base64,{data}" alt="plot {name}"><figcaption>{name}</figcaption></figure>'


def _layers_table(layers: Sequence[tuple[str, dict[str, float], Any, Any]]) -> str:
    names = list(dict.fromkeys(n for _, ld, _, _ in layers for n in ld))
    head = ["unit", "density", "effective density", *names]
    out = ['<div class="scroll"><table>', "<thead><tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in head)
           + "</tr></thead>", "<tbody>"]
    for label, ld, density, eff in layers:
        cells = [f"<td>{html.escape(label)}</td>", f'<td class="num">{_fmt(density)}</td>',
                 f'<td class="num">{_fmt(eff)}</td>']
        cells += [f'<td class="num">{_fmt(ld.get(n))}</td>' for n in names]
        out.append("<tr>" + "".join(cells) + "</tr>")
    out += ["</tbody>", "</table></div>"]
    return "\n".join(out)


def _run_article(f: RunFacts) -> str:
    cfg = f.config
    train = cfg.get("train") if isinstance(cfg.get("train"), dict) else {}
    first = f.environment.get("first_session", {})
    rows = [("hash", f"<code>{f.hash}</code>"), ("kind", html.escape(f.kind)), ("status", _status(f)),
            ("data", html.escape(_named(cfg.get("data")))), ("model", html.escape(_named(cfg.get("model")))),
            ("seed", html.escape(_seed(cfg)))]
    if train:
        keys = ("optimizer", "lr", "batch_size", "steps", "schedule")
        rows.append(("training", html.escape(", ".join(f"{k} {train[k]}" for k in keys if k in train))))
    if first:
        rows.append(("threads", html.escape(str(first.get("threads", "not recorded")))))
        if "device" in first:
            rows.append(("device", html.escape(str(first["device"]))))
        keys = ("ticketlab", "torch", "numpy", "python")
        rows.append(("versions", html.escape(", ".join(f"{k} {first[k]}" for k in keys if k in first))))
        rows.append(("later sessions", str(len(f.environment.get("later_sessions", [])))))
    else:
        rows.append(("environment", "not recorded"))
    rows.append(("stored files", f"{f.files_checked} checked against their checksums"))
    parts = [f'<article class="run" id="run-{f.hash}">', f"<h3><code>{f.hash}</code> {html.escape(f.kind)} {_status(f)}"
             "</h3>"]
    if f.warnings:
        items = "".join(f"<li>{_inline(w)}</li>" for w in f.warnings)
        parts.append(f'<div class="warnings"><ul>{items}</ul></div>')
    parts.append(_meta_table(rows))
    if f.layers:
        parts.append(f"<details{' open' if len(f.layers) <= 12 else ''}><summary>per-layer densities "
                     f"({len(f.layers)} unit(s))</summary>{_layers_table(f.layers)}</details>")
    config_text = html.escape(json.dumps(cfg, indent=2, sort_keys=True), quote=False)
    parts.append(f"<details><summary>config.json</summary><pre>{config_text}</pre></details>")
    parts.append("</article>")
    return "\n".join(parts)


def render_html(facts: Sequence[RunFacts], sections: Sequence[KindSection], command: str, store_root: str) -> str:
    """The page (a string) from the runs' facts and their kinds' sections."""
    from .. import __version__

    written = _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")
    counts = {s: sum(f.status == s for f in facts) for s in ("complete", "incomplete", "running")}
    meta = [("ticketlab", html.escape(__version__)), ("written", written),
            ("runs", f"{len(facts)} (" + ", ".join(f"{n} {s}" for s, n in counts.items() if n) + ")"),
            ("kinds", html.escape(", ".join(s.kind for s in sections))),
            ("command", f"<code>{html.escape(command)}</code>"), ("store", f"<code>{html.escape(store_root)}</code>")]
    body = ["<header>", f"<h1>ticketlab report: {len(facts)} run(s)</h1>", _meta_table(meta), "</header>",
            '<section id="trust">', "<h2>Can I trust this?</h2>", _warnings_box(facts), _overview(facts), "</section>"]
    for s in sections:
        body.append(f'<section class="kind" id="kind-{html.escape(s.kind)}">')
        body.append(f"<h2>{html.escape(s.kind)}: {len(s.runs)} run(s)</h2>")
        if s.error:
            body.append(f'<div class="error">No report of these runs could be computed: {_inline(s.error)}</div>')
        body.append(markdown_to_html(s.markdown))
        body += [_figure(p) for p in s.plots if Path(p).is_file()]
        body.append("</section>")
    body += ['<section id="details">', "<h2>Runs in detail</h2>", *(_run_article(f) for f in facts), "</section>",
             f"<footer><p>Written by ticketlab {html.escape(__version__)}. Density is the fraction of weights kept. "
             "Tables give the numbers of report.md; plots are embedded, the page needs no network.</p></footer>"]
    return "\n".join([
        "<!DOCTYPE html>", '<html lang="en">', "<head>", '<meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>ticketlab report: {len(facts)} run(s)</title>", f"<style>{_CSS}</style>", "</head>", "<body>",
        *body, "</body>", "</html>", ""])


def write_html_report(store: Any, hashes: Sequence[str], out_dir: str | Path, *, command: str | None = None) -> Path:
    """Write ``report.html`` (and ``report.md`` and the plots beside it) for the given runs; its path.

    ``hashes``: full hashes or unique prefixes, of any kinds (plant studies excepted: they have a
    report of their own). ``command``: the command line shown in the header (default: the
    ``ticketlab report`` of these hashes)."""
    from ..atomic import atomic_write_text

    out = Path(out_dir)
    hashes = list(dict.fromkeys(store.run(h).hash for h in hashes))
    if not hashes:
        raise ValueError("an HTML report needs at least one run")
    index = {r["hash"]: r for r in store.list()}
    facts = [run_facts(store, h, index) for h in hashes]
    sections = kind_sections(store, facts, out)
    from .csv_tables import write_csv_tables

    for section in sections:  # the exact tables as CSV too, as a report without --html writes them
        write_csv_tables(section.kind, section.markdown, [store.run(h) for h in section.runs], out)
    out.mkdir(parents=True, exist_ok=True)
    text = "\n\n".join(s.markdown for s in sections if s.markdown)
    atomic_write_text(out / "report.md", text + "\n")
    page = render_html(facts, sections, command or "ticketlab report " + " ".join(hashes), str(store.root))
    atomic_write_text(out / "report.html", page)
    return out / "report.html"


__all__ = ["EFFECTIVE_DENSITY_WARNING", "KindSection", "RunFacts", "kind_sections", "markdown_to_html",
           "render_html", "run_facts", "write_html_report"]

"""The HTML study report (``ticketlab report ... --html``, ``analysis/html_report.py``): one
self-contained page over runs of several kinds, checked as parsed HTML and in headless Chromium.

The study: a tiny IMP on digits, a prune run whose global magnitude mask collapses every layer, a
RigL run, and an IMP run killed midway (an incomplete run with an unfinished unit).
"""
from __future__ import annotations

import base64
import os
import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import pytest

from faults import after_writing, killed_after
from ticketlab.analysis.html_report import markdown_to_html, write_html_report
from ticketlab.cli import build_parser, config_from_args, main
from ticketlab.config import config_hash
from ticketlab.experiments.registry import EXPERIMENTS
from ticketlab.store import Store

QUIET = dict(device="cpu", progress=False, log=lambda _: None)
DIGITS = ["--dataset", "digits", "--model", "mlp", "--batch-size", "64", "--steps", "10it", "--eval-every", "5it"]
IMP = ["imp", *DIGITS, "--model-option", "hidden=[16]", "--levels", "2", "--rate", "0.5"]
COLLAPSED = ["prune", *DIGITS, "--model-option", "hidden=[256,8]", "--method", "magnitude", "--density", "0.01"]
SPARSE = ["sparse", "--dataset", "synthetic_mlp", "--data-option", "n_train=128", "--data-option", "n_test=32",
          "--data-option", "dim=8", "--model", "mlp", "--model-option", "hidden=[16]", "--batch-size", "32",
          "--steps", "2ep", "--method", "rigl", "--density", "0.2", "--delta-t", "2"]
KILLED = [*IMP, "--seed", "1"]
VOID = {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source", "track", "wbr"}


def _config(argv: list[str]):
    return config_from_args(build_parser().parse_args(argv))


class Page(HTMLParser):
    """The parts of a page the tests look at; fails on a tag closed out of order or left open."""

    def __init__(self, text: str):
        super().__init__(convert_charrefs=True)
        self.stack: list[str] = []
        self.tables: dict[str, list[list[str]]] = {}  # id (or table_<n>) -> rows of cell texts
        self.images: list[str] = []
        self.links: list[str] = []
        self.ids: set[str] = set()
        self.scripts = 0
        self._table: list[list[str]] | None = None
        self._cell: list[str] | None = None
        self.feed(text)
        self.close()
        assert not self.stack, f"tags left open: {self.stack}"

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if "id" in a:
            assert a["id"] not in self.ids, f"duplicate id {a['id']}"
            self.ids.add(a["id"])
        if tag == "img":
            self.images.append(a.get("src", ""))
        for key in ("src", "href"):
            if key in a:
                self.links.append(a[key])
        if tag == "script":
            self.scripts += 1
        if tag == "table":
            self._table = self.tables.setdefault(a.get("id") or f"table_{len(self.tables)}", [])
        elif tag == "tr" and self._table is not None:
            self._table.append([])
        elif tag in ("td", "th"):
            self._cell = []
        if tag not in VOID:
            self.stack.append(tag)

    def handle_endtag(self, tag):
        if tag in VOID:
            return
        assert self.stack and self.stack[-1] == tag, f"</{tag}> closes {self.stack[-1:]} ({self.getpos()})"
        self.stack.pop()
        if tag in ("td", "th") and self._cell is not None and self._table:
            self._table[-1].append("".join(self._cell).strip())
            self._cell = None
        elif tag == "table":
            self._table = None

    def handle_data(self, data):
        if self._cell is not None:
            self._cell.append(data)

    def rows(self) -> list[list[str]]:
        return [r for t in self.tables.values() for r in t]


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    """The store, the runs' hashes by role, and the page written over all of them."""
    root = tmp_path_factory.mktemp("study")
    store = Store(root / "runs")
    hashes = {}
    for role, argv in (("imp", IMP), ("collapsed", COLLAPSED), ("sparse", SPARSE)):
        cfg = _config(argv)
        EXPERIMENTS[argv[0]].run(cfg, store, **QUIET)
        hashes[role] = config_hash(cfg)
    killed = _config(KILLED)
    with killed_after(after_writing("metrics.jsonl", under="level_01/ticket")):
        EXPERIMENTS["imp"].run(killed, store, **QUIET)
    hashes["killed"] = config_hash(killed)
    out = root / "report"
    page = write_html_report(store, list(hashes.values()), out, command="ticketlab report (test study)")
    return store, hashes, page


def test_the_page_is_well_formed_and_self_contained(study):
    store, hashes, page = study
    text = page.read_text()
    assert text.startswith("<!DOCTYPE html>")
    parsed = Page(text)  # balanced tags, unique ids
    assert parsed.scripts == 0 and "<link" not in text  # no JavaScript, no stylesheet to fetch
    assert not [u for u in parsed.links if re.match(r"^[a-z]+:", u) and not u.startswith("data:image/png;base64,")]
    assert not re.search(r"https?://", text)  # nothing to fetch
    assert len(parsed.images) >= 3  # IMP, prune and sparse plots
    for src in parsed.images:
        assert src.startswith("data:image/png;base64,")
        assert base64.b64decode(src.split(",", 1)[1])[:8] == b"\x89PNG\r\n\x1a\n"
    assert (page.parent / "report.md").is_file()
    header = parsed.tables["table_0"]
    assert ["runs", "4 (3 complete, 1 incomplete)"] in header and ["command", "ticketlab report (test study)"] in header
    assert any(r[0] == "ticketlab" for r in header) and any(r[0] == "written" for r in header)


def test_every_run_has_its_hash_status_and_final_accuracy_in_a_table(study):
    store, hashes, page = study
    parsed = Page(page.read_text())
    overview = {r[0]: r for r in parsed.tables["runs-table"][1:]}
    assert sorted(overview) == sorted(hashes.values())
    index = {r["hash"]: r for r in store.list()}
    for role, h in hashes.items():
        row = overview[h]
        acc = index[h]["summary"].get("final_test_accuracy")
        if role == "killed":  # no summary yet: the finished levels' numbers
            assert row[2] == "incomplete (interrupted)"
            acc = store.run(h).read_jsonl("levels.jsonl")[-1]["final_test_accuracy"]
        else:
            assert row[2] == "complete"
        assert row[7] == f"{acc:.4f}", (role, row)
    # every row of every table of report.md is a row of an HTML table, with the same numbers
    html_rows = parsed.rows()
    md = (page.parent / "report.md").read_text()
    md_rows = [[c.strip() for c in line.strip().strip("|").split("|")] for line in md.splitlines()
               if line.startswith("|") and not line.startswith("|---")]
    assert len(md_rows) >= 8
    for r in md_rows:
        assert r in html_rows, r
    # the kinds' own tables: IMP's levels, prune's and sparse's lines
    ticket = {r["level"]: r for r in store.run(hashes["imp"]).read_jsonl("levels.jsonl") if r["branch"] == "ticket"}
    for level, r in ticket.items():
        assert [str(level), f"{r['remaining_percent']:.2f}", f"{r['final_test_accuracy']:.4f}"] in [
            row[:3] for row in html_rows]
    assert f"### {hashes['imp'][:8]}" in md and f"<h3>{hashes['imp'][:8]}" in page.read_text()


def test_warnings_are_shown_for_the_collapsed_and_the_incomplete_run(study):
    store, hashes, page = study
    text = page.read_text()
    parsed = Page(text)
    box = text[text.index('id="warnings"'):text.index('id="runs-table"')]
    assert f"#run-{hashes['collapsed']}" in box and "collapsed layers" in box
    assert "effective density 0.0000 of density 0.0100, 100% of the kept weights dead" in box
    assert f"#run-{hashes['killed']}" in box and "incomplete: the run stopped before it finished" in box
    assert "incomplete unit: level_01/ticket (unfinished" in box
    # complete, every layer connected, every file intact (RigL's few dead weights: in its table, not a warning)
    assert f"#run-{hashes['imp']}" not in box and f"#run-{hashes['sparse']}" not in box
    overview = {r[0]: r for r in parsed.tables["runs-table"][1:]}
    assert [overview[hashes[k]][-1] for k in ("imp", "collapsed", "sparse", "killed")] == ["0", "1", "0", "2"]
    for h in hashes.values():  # every run has its own article with its config
        assert f"run-{h}" in parsed.ids
    article = text[text.index(f'id="run-{hashes["collapsed"]}"'):]
    article = article[:article.index("</article>")]
    assert "collapsed layers" in article and "magnitude" in article and "hidden.2.weight" in article


def test_dead_weights_over_the_threshold_are_one_warning_per_run(study, tmp_path, monkeypatch):
    """RigL's run keeps weights on no input-to-output path; over the threshold they are flagged."""
    import ticketlab.analysis.html_report as html_report

    store, hashes, _ = study
    summary = store.run(hashes["sparse"]).read_json("train", "summary.json")
    ratio = summary["effective_density"] / summary["density"]
    assert 0.5 < ratio < 1  # some dead weights, fewer than half: no warning at the default threshold
    monkeypatch.setattr(html_report, "EFFECTIVE_DENSITY_WARNING", (1 + ratio) / 2)
    text = write_html_report(store, [hashes["sparse"]], tmp_path / "out").read_text()
    box = text[text.index('id="warnings"'):text.index('id="runs-table"')]
    items = re.findall(r"<li>(.*?)</li>", box)
    assert len(items) == 1 and "most kept weights are dead (on no input-to-output path) in 1 unit(s): train" in items[0]
    assert f"effective density {summary['effective_density']:.4f} of density {summary['density']:.4f}" in items[0]

def test_a_run_being_written_is_shown_as_running(study, tmp_path):
    store, hashes, _ = study
    run = store.run(hashes["killed"])
    with store.lock(run):  # what a live ticketlab process holds while it writes the run
        text = write_html_report(store, [run.hash], tmp_path / "out").read_text()
    overview = Page(text).tables["runs-table"]
    assert overview[1][:3] == [run.hash, "imp", "running"]
    assert "running: another process is writing this run now" in text

def test_a_checksum_failure_is_shown_and_nothing_else_breaks(study, tmp_path):
    store, hashes, _ = study
    copy = tmp_path / "runs"
    shutil.copytree(store.root, copy)
    mask = copy / hashes["imp"] / "level_01" / "mask.safetensors"
    data = bytearray(mask.read_bytes())
    data[-1] ^= 0xFF
    mask.write_bytes(bytes(data))
    page = write_html_report(Store(copy), [hashes["imp"]], tmp_path / "out")
    text = page.read_text()
    box = text[text.index('id="warnings"'):text.index('id="runs-table"')]
    assert "checksum failure: level_01/mask.safetensors" in box
    Page(text)


def test_a_run_its_kind_cannot_report_yet_is_left_out_with_a_warning(study, tmp_path):
    """A prune run killed before its summary: prune's report needs it, so the page reports the
    complete prune run alone and says why the other is missing (no traceback, no empty page)."""
    store, hashes, _ = study
    copy = Store(tmp_path / "runs")
    shutil.copytree(store.root / hashes["collapsed"], copy.root / hashes["collapsed"])
    copy.reindex()
    killed = _config([*COLLAPSED, "--seed", "1"])
    with killed_after(after_writing("metrics.jsonl", under="train")):
        EXPERIMENTS["prune"].run(killed, copy, **QUIET)
    page = write_html_report(copy, [hashes["collapsed"], config_hash(killed)], tmp_path / "out")
    text = page.read_text()
    parsed = Page(text)
    assert "<h2>prune: 1 run(s)</h2>" in text and "magnitude" in text
    box = text[text.index('id="warnings"'):text.index('id="runs-table"')]
    assert "left out of the prune tables and plots" in box and "train/summary.json is missing" in box
    assert "incomplete unit: train (unfinished" in box
    assert [r[2] for r in parsed.tables["runs-table"][1:]] == ["complete", "incomplete (interrupted)"]
    assert len(parsed.images) == 1

def test_cli_report_html_writes_the_page_beside_report_md(study, tmp_path, capsys):
    store, hashes, _ = study
    out = tmp_path / "rep"
    assert main(["report", "experiment=imp", "--runs-dir", str(store.root), "--out", str(out), "--html"]) == 0
    printed = capsys.readouterr().out
    assert f"html: {out / 'report.html'}" in printed and f"table: {out / 'report.md'}" in printed
    parsed = Page((out / "report.html").read_text())
    assert sorted(r[0] for r in parsed.tables["runs-table"][1:]) == sorted([hashes["imp"], hashes["killed"]])
    assert "ticketlab report experiment=imp" in (out / "report.html").read_text()
    # without --html: no page, the markdown report as before
    plain = tmp_path / "plain"
    assert main(["report", hashes["sparse"], "--runs-dir", str(store.root), "--out", str(plain)]) == 0
    assert (plain / "report.md").is_file() and not (plain / "report.html").exists()


def test_markdown_tables_paragraphs_and_headings_convert():
    text = markdown_to_html("### a <b>\n\nsome `code` text\n\n| x | y |\n|---|---|\n| 1.5 | a |\n\n"
                            "Per seed:\n\n| z |\n|---|\n| 2 |")
    assert "<h3>a &lt;b&gt;</h3>" in text and "<p>some <code>code</code> text</p>" in text
    assert '<td class="num">1.5</td><td>a</td>' in text and "<p>Per seed:</p>" in text
    assert text.count("<table>") == 2
    Page(text)


# --- in a real browser ----------------------------------------------------------------------------------

CHROMIUM = next((shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome") if shutil.which(n)), None)
PROBE = """<script>
window.__errors = [];
window.addEventListener("error", e => window.__errors.push(String(e.message || (e.target && e.target.src) || e)), true);
window.addEventListener("load", () => {
  const imgs = [...document.images];
  document.body.dataset.images = imgs.length;
  document.body.dataset.loaded = imgs.filter(i => i.complete && i.naturalWidth > 0).length;
  document.body.dataset.errors = window.__errors.length;
});
</script>"""


def _chromium(*args: str, home: Path) -> subprocess.CompletedProcess:
    return subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                           "--enable-logging=stderr", "--v=0", f"--user-data-dir={home / 'profile'}", *args],
                          capture_output=True, text=True, timeout=120, env={**os.environ, "HOME": str(home)})


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not on PATH (Debian/Ubuntu: apt-get install -y chromium)")
def test_the_page_renders_in_headless_chromium(study, tmp_path):
    """The DOM Chromium builds holds the tables, every image decodes (a probe script added to a copy
    of the page counts them after the load event), the console stays silent, and a screenshot of
    the page is not blank."""
    _, hashes, page = study
    text = page.read_text()
    probe = tmp_path / "probe.html"
    probe.write_text(text.replace("</body>", PROBE + "</body>"))
    done = _chromium("--dump-dom", probe.as_uri(), home=tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    dom = done.stdout
    body = re.search(r"<body([^>]*)>", dom).group(1)
    n = len(Page(text).images)
    assert f'data-images="{n}"' in body and f'data-loaded="{n}"' in body and 'data-errors="0"' in body, body
    assert 'id="runs-table"' in dom and dom.count("<table") >= 6 and "<tbody>" in dom
    for h in hashes.values():
        assert h in dom
    console = [line for line in done.stderr.splitlines() if "CONSOLE" in line]
    assert not console, console

    shot = tmp_path / "page.png"
    done = _chromium(f"--screenshot={shot}", "--window-size=1280,2400", "--hide-scrollbars", page.as_uri(),
                     home=tmp_path)
    assert done.returncode == 0 and shot.is_file(), done.stderr[-2000:]
    from PIL import Image

    img = Image.open(shot).convert("RGB")
    assert img.size == (1280, 2400)
    small = img.resize((128, 240))
    pixels = [small.getpixel((x, y)) for x in range(small.width) for y in range(small.height)]
    non_white = sum(1 for p in pixels if min(p) < 240)
    assert non_white > 0.02 * len(pixels), "the screenshot is (nearly) blank"
    assert len(set(pixels)) > 50  # text, tables, status colours and plots, not one flat colour

"""Self-verifying files: every file the Store writes carries a SHA-256 of its own content.

A bit flip, a truncation or a foreign file is found when the file is read, reported with its path,
and never resumed from. The checksum lives *inside* each file, so a file and its checksum are
written in one atomic rename and can never disagree after a kill:

- JSON (``config.json``, ``summary.json``, ...): an object with one extra key ``"_sha256"``, the
  hash of the canonical JSON of the other keys (sorted keys, no spaces).
- JSON lines (``metrics.jsonl``, ``levels.jsonl``, ...): the rows as usual, then one footer line
  ``{"_sha256": ..., "_rows": N}`` over the bytes of the rows above it, so a lost line is found too.
- safetensors (weights, checkpoints, masks): a metadata entry ``"_sha256"`` over the header without
  that entry (canonical JSON) followed by the tensor bytes. Any safetensors reader still reads them.

The SQLite index is not checksummed: it is derived from the run folders and rebuilt from them by
``ticketlab ls --reindex``. Reports (``report.md``, plots) are outputs, rewritten on demand.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

CHECKSUM_KEY = "_sha256"
ROWS_KEY = "_rows"


class StoreError(RuntimeError):
    """A run folder that is corrupt, locked, or does not belong to the config asked for."""


class CorruptFileError(StoreError):
    """A stored file whose content does not match its checksum, or that cannot be parsed."""

    def __init__(self, path: Path | str, problem: str):
        self.path = Path(path)
        self.problem = problem
        super().__init__(
            f"{path} is corrupt: {problem}. ticketlab left it untouched and will not resume from it; "
            f"move it aside or delete it to recompute what it holds (`ticketlab verify` checks a whole store)"
        )


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def canonical_json(obj: Any) -> bytes:
    """One byte string per JSON value, whatever the formatting of the file it came from."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=True).encode()


# --- JSON ---------------------------------------------------------------------------------------
def seal_json(obj: dict[str, Any]) -> str:
    """Pretty JSON text of ``obj`` with its checksum key added."""
    if not isinstance(obj, dict):
        raise TypeError(f"stored JSON files hold objects, got {type(obj).__name__}")
    if CHECKSUM_KEY in obj:
        raise ValueError(f"{CHECKSUM_KEY!r} is reserved for the checksum")
    sealed = {**obj, CHECKSUM_KEY: _sha256(canonical_json(obj))}
    return json.dumps(sealed, indent=2, sort_keys=True) + "\n"


def open_json(text: str | bytes, path: Path | str, *, require: bool = True) -> dict[str, Any]:
    """Parse and verify a sealed JSON file; return the object without its checksum key."""
    try:
        obj = json.loads(text)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CorruptFileError(path, f"not valid JSON ({exc})") from None
    if not isinstance(obj, dict):
        raise CorruptFileError(path, f"expected a JSON object, found {type(obj).__name__}")
    stored = obj.pop(CHECKSUM_KEY, None)
    if stored is None:
        if require:
            raise CorruptFileError(path, "it has no checksum (edited by hand, or written by ticketlab before "
                                         "checksums: `ticketlab migrate` upgrades such a store)")
        return obj
    if stored != _sha256(canonical_json(obj)):
        raise CorruptFileError(path, "its content does not match its checksum")
    return obj


# --- JSON lines -----------------------------------------------------------------------------------
def seal_jsonl(rows: list[dict[str, Any]]) -> str:
    body = "".join(json.dumps(r, sort_keys=True) + "\n" for r in rows)
    footer = {CHECKSUM_KEY: _sha256(body.encode()), ROWS_KEY: len(rows)}
    return body + json.dumps(footer, sort_keys=True) + "\n"


def open_jsonl(data: bytes, path: Path | str, *, require: bool = True) -> list[dict[str, Any]]:
    """Parse and verify a sealed JSON-lines file; return its rows (the footer removed)."""
    lines = data.split(b"\n")
    if lines and lines[-1] == b"":
        lines.pop()
    footer: dict[str, Any] | None = None
    if lines:
        try:
            last = json.loads(lines[-1])
        except (json.JSONDecodeError, UnicodeDecodeError):
            last = None
        if isinstance(last, dict) and CHECKSUM_KEY in last:
            footer = last
            lines.pop()
    if footer is None and require:
        raise CorruptFileError(path, "its checksum footer is missing (truncated, edited, or written by ticketlab "
                                     "before checksums: `ticketlab migrate` upgrades such a store)")
    body = b"".join(line + b"\n" for line in lines)
    if footer is not None and (footer.get(CHECKSUM_KEY) != _sha256(body) or footer.get(ROWS_KEY) != len(lines)):
        raise CorruptFileError(path, "its rows do not match its checksum")
    rows = []
    for i, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise CorruptFileError(path, f"line {i} is not valid JSON ({exc})") from None
    return rows


# --- safetensors ----------------------------------------------------------------------------------
def _split_safetensors(data: bytes, path: Path | str) -> tuple[dict[str, Any], memoryview]:
    """(header, tensor bytes) of a safetensors file; the tensor bytes are a view, not a copy."""
    if len(data) < 8:
        raise CorruptFileError(path, f"{len(data)} bytes is too short for a safetensors file")
    n = int.from_bytes(data[:8], "little")
    if n > len(data) - 8:
        raise CorruptFileError(path, f"its header claims {n} bytes but the file holds {len(data) - 8}")
    try:
        header = json.loads(data[8:8 + n])
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CorruptFileError(path, f"its header is not valid JSON ({exc})") from None
    if not isinstance(header, dict):
        raise CorruptFileError(path, "its header is not a JSON object")
    return header, memoryview(data)[8 + n:]


def _join_safetensors(header: dict[str, Any], body: bytes | memoryview) -> bytes:
    raw = json.dumps(header, separators=(",", ":"), sort_keys=True).encode()  # same bytes for the same content
    raw += b" " * (-len(raw) % 8)  # safetensors aligns the data to 8 bytes
    return b"".join((len(raw).to_bytes(8, "little"), raw, body))  # one copy of the tensor bytes


def _safetensors_digest(header: dict[str, Any], body: bytes | memoryview) -> str:
    h = hashlib.sha256(canonical_json(header))
    h.update(body)
    return h.hexdigest()


def seal_safetensors(data: bytes) -> bytes:
    """Add the checksum entry to the metadata of serialised safetensors bytes."""
    header, body = _split_safetensors(data, "<new file>")
    meta = dict(header.get("__metadata__") or {})
    meta.pop(CHECKSUM_KEY, None)
    header = {**header, "__metadata__": meta}
    if not meta:
        header.pop("__metadata__")
    digest = _safetensors_digest(header, body)
    return _join_safetensors({**header, "__metadata__": {**meta, CHECKSUM_KEY: digest}}, body)


def verify_safetensors(data: bytes, path: Path | str, *, require: bool = True) -> dict[str, str]:
    """Check a safetensors file's checksum and tensor extents; return its metadata (checksum removed)."""
    header, body = _split_safetensors(data, path)
    meta = dict(header.get("__metadata__") or {})
    stored = meta.pop(CHECKSUM_KEY, None)
    if stored is None:
        if require:
            raise CorruptFileError(path, "it has no checksum (not written by ticketlab, or written before "
                                         "checksums: `ticketlab migrate` upgrades such a store)")
    else:
        check = {k: v for k, v in header.items() if k != "__metadata__"}
        if meta:
            check["__metadata__"] = meta
        if stored != _safetensors_digest(check, body):
            raise CorruptFileError(path, "its content does not match its checksum")
    end = max((int(v["data_offsets"][1]) for k, v in header.items()
               if k != "__metadata__" and isinstance(v, dict) and "data_offsets" in v), default=0)
    if end != len(body):
        raise CorruptFileError(path, f"its tensors need {end} bytes of data but it holds {len(body)}")
    return meta


# --- any stored file ------------------------------------------------------------------------------
def verify_file(path: Path) -> None:
    """Verify one stored file by its kind (.json, .jsonl, .safetensors); other files are skipped."""
    if path.suffix not in (".json", ".jsonl", ".safetensors"):
        return
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise CorruptFileError(path, f"it cannot be read ({exc.strerror or exc})") from None
    if path.suffix == ".json":
        open_json(data, path)
    elif path.suffix == ".jsonl":
        open_jsonl(data, path)
    else:
        verify_safetensors(data, path)


def seal_legacy_file(path: Path) -> bool:
    """Give a file written before checksums existed its checksum; True if it was sealed now.

    The file must parse as its kind (JSON object, JSON lines, a safetensors file that loads): a
    legacy file cannot be checked for flipped bits, only for structure, so the upgrade trusts what
    parses. A file that already carries a checksum is verified instead (and a mismatch raised).
    """
    from .atomic import atomic_write_bytes, atomic_write_text

    data = path.read_bytes()
    if path.suffix == ".json":
        obj = open_json(data, path, require=False)
        if CHECKSUM_KEY in json.loads(data):
            return False
        atomic_write_text(path, seal_json(obj))
        return True
    if path.suffix == ".jsonl":
        rows = open_jsonl(data, path, require=False)
        lines = data.split(b"\n")
        last = next((line for line in reversed(lines) if line.strip()), b"")
        try:
            if CHECKSUM_KEY in json.loads(last):
                return False
        except (json.JSONDecodeError, UnicodeDecodeError, TypeError):
            pass
        atomic_write_text(path, seal_jsonl(rows))
        return True
    if path.suffix == ".safetensors":
        header, _ = _split_safetensors(data, path)
        if CHECKSUM_KEY in (header.get("__metadata__") or {}):
            verify_safetensors(data, path)
            return False
        from safetensors.torch import load

        try:
            load(data)
        except Exception as exc:  # safetensors raises several error types for damaged files
            raise CorruptFileError(path, f"safetensors cannot read it ({exc})") from exc
        verify_safetensors(data, path, require=False)
        atomic_write_bytes(path, seal_safetensors(data))
        return True
    return False

"""How much of a planted ticket a pruning method found: the metrics Plant 'n' Seek lacks.

Edges are weights. With T the planted ticket's edges and M a method's kept edges: recall
|T & M| / |T| (how much of the ticket survived), precision |T & M| / |M| (how much of what was kept
is ticket), Jaccard |T & M| / |T | M|; per layer the kept fraction of all weights and of the
ticket's; layer collapse and effective density from ``analysis.connectivity``.
"""
from __future__ import annotations

from typing import Any

from torch import nn

from ..analysis.connectivity import is_disconnected, layer_report
from ..masks import Mask


def recovery_metrics(found: Mask, ticket: Mask, model: nn.Module | None = None,
                     input_shape: tuple[int, ...] | None = None) -> dict[str, Any]:
    """Recall, precision and Jaccard of ``found`` against the planted ``ticket`` (same layout),
    per-layer kept fractions, and, given the model and input shape, collapse and effective density."""
    both = found & ticket
    hit, kept, planted = both.num_kept, found.num_kept, ticket.num_kept
    out: dict[str, Any] = {
        "recall": hit / planted if planted else 1.0,
        "precision": hit / kept if kept else 0.0,
        "jaccard": found.overlap(ticket),
        "density": found.density,
        "ticket_density": ticket.density,
        "layers": [
            {"name": n, "kept_fraction": int(found[n].sum()) / found[n].numel(),
             "ticket_kept_fraction": (int(both[n].sum()) / int(ticket[n].sum())) if int(ticket[n].sum()) else 1.0}
            for n in found
        ],
    }
    if model is not None and input_shape is not None:
        rows = layer_report(model, found, input_shape)
        out["effective_density"] = sum(r["effective"] for r in rows) / found.num_total
        out["collapsed_layers"] = [r["name"] for r in rows if r["collapsed"]]
        out["disconnected"] = is_disconnected(model, found, input_shape)
    return out

"""CUDA-graph replay of an edit at input shapes that recur, such as the decode steps of ``generate()``.

At decode each edit sees a few rows, and its launches of about 20 small kernels cost far more host
time than their arithmetic (issue 15: about 0.6 ms per edit eager on an H200 at 32 x 1 x 4096,
against about 20 microseconds for the same edit replayed from a CUDA graph). ``GraphedEdit`` wraps
an edit ``x -> y``. On CUDA, the ``min_seen``-th time it sees inputs of one shape, dtype, device
and inference mode with at most ``max_rows`` rows, it captures the edit in a CUDA graph; then it copies the
input in, replays the graph and returns a copy of its output: three launches. Every other call runs
the edit as it is: CPU tensors, shapes not seen often enough, large inputs (prefill, where launches
are a small part of the time), inputs that need gradients, and calls made while the stream is being
captured (a graph around a whole decode step then captures the eager edit itself).

The edit must read the same weight tensors at every call (a graph replays the addresses it saw at
capture). ``bind(edit, weights, variant)`` says which: graphs captured for other weights (compared
by identity) or another variant are dropped. ``hpr.editor_set.EditorSet.apply(graphed=True)`` keeps
one ``GraphedEdit`` per layer across its ``apply`` blocks and binds it to the weights each block
reads (``HPR._cached``, rebuilt only when a parameter changes), so a decode shape is captured once,
not once per ``generate()`` call.
"""

from __future__ import annotations

import warnings
from collections import OrderedDict
from typing import Any

import torch
from torch import Tensor

from hpr.lm.hooks import EditFn

#: (shape, dtype, device, inference mode): tensors made in inference mode cannot be updated outside it
_Key = tuple[tuple[int, ...], torch.dtype, torch.device, bool]
#: At most this many shapes are counted towards ``min_seen`` at once.
MAX_SEEN = 512


class GraphedEdit:
    """``edit`` replayed from one CUDA graph per recurring (shape, dtype, device, inference mode); same
    results.

    ``max_rows``: graphs only for inputs of at most this many rows (``x.numel() / x.shape[-1]``);
    ``max_graphs``: at most this many graphs, the least recently used dropped first;
    ``min_seen``: capture at the ``min_seen``-th input of a shape (1: at the first).
    ``graphs`` holds the captured (shape, dtype, device, inference mode) keys, most recent last.
    ``edit`` may be left out and given later with ``bind``.
    """

    def __init__(self, edit: EditFn | None = None, max_rows: int = 256, max_graphs: int = 8, min_seen: int = 2) -> None:
        if max_rows < 1 or max_graphs < 1 or min_seen < 1:
            raise ValueError("max_rows, max_graphs and min_seen must be at least 1")
        self.edit = edit
        self.weights: object = None
        self.variant: object = None
        self.max_rows = max_rows
        self.max_graphs = max_graphs
        self.min_seen = min_seen
        self.graphs: OrderedDict[_Key, tuple[Tensor, Tensor, Any]] = OrderedDict()
        self.seen: dict[_Key, int] = {}
        self.failed: str | None = None

    def clear(self) -> None:
        """Drop every graph (call it when the edit's weights are replaced)."""
        self.graphs.clear()
        self.seen.clear()

    def bind(self, edit: EditFn, weights: object, variant: object = None) -> None:
        """Use ``edit`` from now on; it reads ``weights`` (held here while graphs may read them) in
        the way ``variant`` names. Graphs captured for other weights (not the same object) or another
        variant (not equal) are dropped; for the same ones they are kept and replayed."""
        if weights is not self.weights or variant != self.variant:
            self.clear()
        self.edit, self.weights, self.variant = edit, weights, variant

    def eligible(self, x: Tensor) -> bool:
        """Whether ``x`` may go through a graph (CUDA, few rows, no autograd, no capture under way)."""
        if x.device.type != "cuda" or self.failed is not None or x.dim() == 0:
            return False
        if x.requires_grad and torch.is_grad_enabled():
            return False
        rows = x.numel() // max(int(x.shape[-1]), 1)
        return rows <= self.max_rows and not torch.cuda.is_current_stream_capturing()

    def __call__(self, x: Tensor) -> Tensor:
        edit = self.edit
        if edit is None:
            raise RuntimeError("GraphedEdit has no edit: pass one to the constructor or to bind()")
        if not self.eligible(x):
            return edit(x)
        key: _Key = (tuple(x.shape), x.dtype, x.device, torch.is_inference_mode_enabled())
        entry = self.graphs.get(key)
        if entry is None:
            if len(self.seen) >= MAX_SEEN:  # many one-off shapes (scoring): forget the counts, stay small
                self.seen.clear()
            self.seen[key] = self.seen.get(key, 0) + 1
            if self.seen[key] < self.min_seen:
                return edit(x)
            try:
                entry = self._capture(x, edit)
            except Exception as exc:  # noqa: BLE001 - a graph is an optimisation: stay correct, go eager
                self.failed = f"{type(exc).__name__}: {exc}"
                warnings.warn(
                    f"CUDA-graph capture of the edit failed ({self.failed}); using the eager edit",
                    RuntimeWarning,
                    stacklevel=2,
                )
                return edit(x)
            self.graphs[key] = entry
            while len(self.graphs) > self.max_graphs:
                self.graphs.popitem(last=False)
        else:
            self.graphs.move_to_end(key)
        static_in, static_out, graph = entry
        static_in.copy_(x)
        graph.replay()
        return static_out.clone()

    def _capture(self, x: Tensor, edit: EditFn) -> tuple[Tensor, Tensor, Any]:
        """Warm ``edit`` up on a side stream, then capture it on a static copy of ``x``."""
        with torch.cuda.device(x.device), torch.no_grad():
            static_in = torch.empty_like(x).copy_(x)
            current = torch.cuda.current_stream(x.device)
            side = torch.cuda.Stream(device=x.device)
            side.wait_stream(current)
            with torch.cuda.stream(side):
                for _ in range(2):  # lazy initialisation (kernels, library handles) outside the graph
                    edit(static_in)
            current.wait_stream(side)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                static_out = edit(static_in)
        return static_in, static_out, graph


__all__ = ["GraphedEdit"]

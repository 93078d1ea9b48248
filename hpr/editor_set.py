"""Sets of per-layer HPR editors for one model: which layers are edited, their provenance, saving
and loading (``config.json`` + ``model.safetensors``, nothing pickled), and ``apply``, the context
manager that edits a model's block outputs."""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, cast

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from torch import Tensor, nn

from hpr import _files
from hpr.editor import ANGLE_INPUTS, HPR, edit_with
from hpr.errors import EditorError
from hpr.lm.architectures import fingerprint as model_fingerprint
from hpr.lm.architectures import same_model
from hpr.lm.graphs import GraphedEdit
from hpr.lm.hooks import edit_block_outputs

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
FORMAT = "hpr-editor-set/1"


class EditorSet:
    """Per-layer HPR editors for one model, the selected layers, and their provenance.

    ``editors`` holds every trained layer; ``selected`` lists the edited ones, best first
    (top-k by validation probe accuracy). ``config`` records hidden size, per-layer validation
    accuracy, training parameters and dataset; ``model`` is the model fingerprint.
    """

    def __init__(
        self,
        editors: Mapping[int, HPR],
        model: Mapping[str, Any],
        selected: Sequence[int] | None = None,
        config: Mapping[str, Any] | None = None,
    ) -> None:
        if not editors:
            raise EditorError("an editor set needs at least one layer")
        self.editors = {int(k): v for k, v in sorted(editors.items())}
        self.model = dict(model)
        self.selected = [int(i) for i in (selected if selected is not None else self.editors)]
        missing = [i for i in self.selected if i not in self.editors]
        if missing:
            raise EditorError(f"selected layers {missing} have no trained editor")
        self.config = dict(config or {})
        first = next(iter(self.editors.values()))
        self.hidden_size = first.hidden_size
        self._graphs: dict[tuple[int, bool], GraphedEdit] = {}

    @property
    def val_accuracy(self) -> dict[int, float]:
        return {int(k): float(v) for k, v in self.config.get("val_accuracy", {}).items()}

    def top(self, k: int, use_angle: bool | None = None) -> EditorSet:
        """The same editors with the ``k`` best layers selected (by validation accuracy)."""
        acc = self.val_accuracy
        order = sorted(self.editors, key=lambda i: (-acc.get(i, 0.0), i))
        out = EditorSet(self.editors, self.model, order[:k], {**self.config, "k": k})
        if use_angle is not None:
            out = out.with_angle(use_angle)
        return out

    def with_angle(self, use_angle: bool) -> EditorSet:
        """A copy whose editors use (or skip, for -AnglePred) the angle network."""
        eds = {}
        for i, e in self.editors.items():
            c = HPR(e.hidden_size, e.angle_layers, use_angle, e.angle_input)
            c.load_state_dict(e.state_dict())
            eds[i] = c.to(next(e.parameters()).device)
        return EditorSet(eds, self.model, self.selected, {**self.config, "use_angle": use_angle})

    def check_model(self, model: nn.Module, name: str | None = None) -> None:
        """Refuse a model whose fingerprint differs from the one the editors were trained on."""
        fp = model_fingerprint(model, name if name is not None else self.model.get("name"))
        if fp["hidden_size"] != self.hidden_size:
            raise EditorError(
                f"hidden-size mismatch: the editors have d={self.hidden_size}, the model "
                f"{fp['name']!r} has d={fp['hidden_size']}; train editors for this model"
            )
        if not same_model(fp, self.model):
            raise EditorError(
                f"these editors were trained on {self.model} but the model is {fp}; "
                "train editors for this model (hpr train --model ...)"
            )

    @contextmanager
    def apply(
        self, model: nn.Module, check: bool = True, compiled: bool = False, graphed: bool = False
    ) -> Iterator[nn.Module]:
        """Edit the selected layers of ``model`` inside the block; hooks removed on exit. The editors'
        weights are read at the first edit: changes to them inside the block take effect at the next.

        ``compiled=True`` fuses each edit with ``torch.compile`` (worth it for long ``generate()``
        runs on a GPU, where the eager edit's kernel launches cost more than its arithmetic; the
        first call per shape compiles for seconds to a minute). ``graphed=True`` replays each edit
        from a CUDA graph at the few-row shapes that recur, the decode steps
        (``hpr.lm.graphs.GraphedEdit``; CPU tensors and large inputs run eagerly). The graphs are
        kept with this set for later ``apply`` blocks while the weights stay the same (a shape is
        captured once, not at every ``generate()``); ``clear_graphs()`` frees them. Results are the same.
        """
        if check:
            self.check_model(model)
        edits = {}
        for i in self.selected:
            graphs = self._graphs.setdefault((i, compiled), GraphedEdit()) if graphed else None
            edits[i] = _EditCall(self.editors[i], compiled, graphs)
        with torch.no_grad(), edit_block_outputs(model, edits):
            yield model

    def clear_graphs(self) -> None:
        """Free the CUDA graphs that ``apply(graphed=True)`` keeps (they are captured again when needed)."""
        self._graphs.clear()

    def save(self, directory: str | Path) -> Path:
        """Write ``config.json`` and ``model.safetensors`` into ``directory`` (atomically)."""
        out = Path(directory)
        tensors: dict[str, Tensor] = {}
        layers: dict[str, dict[str, Any]] = {}
        for i, e in self.editors.items():
            for k, v in e.state_dict().items():
                tensors[f"layer{i}.{k}"] = v
            layers[str(i)] = {"angle_layers": e.angle_layers, "use_angle": e.use_angle}
            if e.angle_input != "raw":  # absent: "raw" (editor sets saved before the variant existed)
                layers[str(i)]["angle_input"] = e.angle_input
        _files.save_tensors(out / WEIGHTS_FILE, tensors, {"format": FORMAT})
        cfg = {
            "format": FORMAT,
            "hidden_size": self.hidden_size,
            "layers": sorted(self.editors),
            "selected": self.selected,
            "editors": layers,
            "model": self.model,
            **{k: v for k, v in self.config.items() if k not in {"format", "editors", "model"}},
        }
        _files.write_json(out / CONFIG_FILE, cfg)
        return out

    @classmethod
    def load(cls, directory: str | Path, model: nn.Module | None = None) -> EditorSet:
        """Load a saved set; with ``model``, refuse it unless it matches the fingerprint."""
        cfg = read_config(directory)
        path = Path(directory) / WEIGHTS_FILE
        if not path.is_file():
            raise EditorError(f"{path} is missing; re-save the editors or train them again")
        try:
            tensors = load_file(str(path))
        except (SafetensorError, OSError, ValueError) as exc:
            raise EditorError(f"{path} is not a readable safetensors file ({exc}); retrain") from exc
        d = int(cfg["hidden_size"])
        editors = {}
        for key, spec in cfg["editors"].items():
            e = HPR(d, int(spec["angle_layers"]), bool(spec["use_angle"]), str(spec.get("angle_input", "raw")))
            prefix = f"layer{key}."
            state = {k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)}
            try:
                e.load_state_dict(state)
            except RuntimeError as exc:
                raise EditorError(
                    f"weights of layer {key} in {path} do not fit an editor of hidden size {d}: {exc}; the weights "
                    "and config.json come from different saves: re-save the editors or retrain them (hpr train)"
                ) from exc
            editors[int(key)] = e
        extra = {k: v for k, v in cfg.items() if k not in {"editors", "model", "selected"}}
        out = cls(editors, cfg["model"], cfg["selected"], extra)
        if model is not None:
            out.check_model(model)
        return out


class _EditCall:
    """A picklable callable ``x -> editor.edit(x)`` for the hooks. It reads the editor's weights
    (``HPR._cached``) at its first call and again only when ``x`` is on another device (then it
    moves the editor there): weight changes made inside an ``apply()`` block apply from the next.
    ``graphs``: edit through this ``GraphedEdit``, bound to the weights at each read (it keeps its
    graphs if they are the same tensors as at its last binding, and drops them otherwise)."""

    def __init__(self, editor: HPR, compiled: bool = False, graphs: GraphedEdit | None = None) -> None:
        self.editor = editor
        self.compiled = compiled
        self.cached: tuple[Any, ...] | None = None
        self.graphs = graphs

    def __call__(self, x: Tensor) -> Tensor:
        cached = self.cached
        if cached is None or cached[0].device != x.device:
            if self.editor.probe.weight.device != x.device:
                self.editor.to(x.device)
            cached = self.cached = self.editor._cached()
            if self.graphs is not None:
                variant = (self.editor.use_angle, self.editor.angle_input, self.compiled)
                self.graphs.bind(self._edit, cached, variant)
        if self.graphs is not None:
            return self.graphs(x)
        return edit_with(x, cached, self.editor.use_angle, self.compiled, self.editor.angle_input)

    def _edit(self, x: Tensor) -> Tensor:
        """The eager edit with the weights read last (what a graph captures)."""
        return edit_with(x, cast(tuple, self.cached), self.editor.use_angle, self.compiled, self.editor.angle_input)


def read_config(directory: str | Path) -> dict[str, Any]:
    """Read and validate an editor directory's ``config.json``; ``EditorError`` if unusable."""
    d = Path(directory)
    if not d.is_dir():
        raise EditorError(f"editor directory {d} does not exist; train editors with `hpr train`")
    path = d / CONFIG_FILE
    if not path.is_file():
        raise EditorError(
            f"{path} is missing; {d} is not a saved editor set: pass the folder that "
            "`hpr train --out` (or EditorSet.save) wrote"
        )
    try:
        cfg = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise EditorError(f"{path} is not valid JSON ({exc}); re-save or retrain the editors") from exc
    if not isinstance(cfg, dict):
        raise EditorError(f"{path} must hold a JSON object; re-save or retrain the editors")
    problems = []
    if not isinstance(cfg.get("hidden_size"), int) or cfg["hidden_size"] < 1:
        problems.append("hidden_size must be a positive integer")
    eds = cfg.get("editors")
    if not isinstance(eds, dict) or not eds:
        problems.append("editors must be a non-empty object")
    else:
        for key, spec in eds.items():
            if not str(key).lstrip("-").isdigit() or int(key) < 0:
                problems.append(f"editor key {key!r} is not a layer index")
            elif (
                not isinstance(spec, dict)
                or not isinstance(spec.get("angle_layers"), int)
                or not 1 <= spec["angle_layers"] <= 16
                or not isinstance(spec.get("use_angle"), bool)
            ):
                problems.append(f"editor {key} needs angle_layers (1..16) and use_angle (bool)")
            elif spec.get("angle_input", "raw") not in ANGLE_INPUTS:
                problems.append(f"editor {key}: angle_input must be one of {ANGLE_INPUTS}")
    if not isinstance(cfg.get("model"), dict):
        problems.append("model (the fingerprint) must be an object")
    sel = cfg.get("selected")
    if not isinstance(sel, list) or not sel or not all(isinstance(i, int) for i in sel):
        problems.append("selected must be a non-empty list of layer indices")
    elif isinstance(eds, dict) and any(str(i) not in eds for i in sel):
        problems.append("selected names a layer without an editor")
    if problems:
        raise EditorError(
            f"{path} is not a valid editor config: "
            + "; ".join(problems)
            + "; restore the file EditorSet.save wrote, or retrain the editors (hpr train)"
        )
    return cfg


__all__ = ["CONFIG_FILE", "FORMAT", "WEIGHTS_FILE", "EditorSet", "read_config"]

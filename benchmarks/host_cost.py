"""What the editing hooks cost the host, apart from the edit's arithmetic (CPU; issue 15's "floor").

On a GPU, eager decode is host-bound: a step costs about the Python and launch time of its
operations. This measures, on tiny tensors (so arithmetic is negligible), medians of interleaved
rounds of back-to-back calls:
  - ``hook_us``: one forward hook on a module (``hpr.lm.hooks``' output hook around an edit that
    returns its input) over the same module called without it (median of the rounds' differences);
  - ``apply_enter_exit_us``: entering and leaving ``EditorSet.apply`` (k hooks registered and removed,
    the model fingerprint checked), once per ``generate()`` call, and the same for bare
    ``edit_block_outputs`` with edits that change nothing (``hooks_only`` in ``benchmarks/gpu.py``);
and counts the ATen operations one ``HPR.edit`` dispatches at a decode shape, per dtype of the
activations and of the angle network (views included; on CUDA every other one is a kernel launch).
Prints JSON and writes it to ``benchmarks/results/host-cost.json`` (``--out``).

    python benchmarks/host_cost.py [--k 5] [--layers 32] [--out FILE]
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any

from common import RESULTS, alternate, emit, median, setup_threads

ROUNDS = 21


def per_call_us(fns: dict[str, Callable[[], Any]], calls: int) -> dict[str, list[float]]:
    """Microseconds per call of each function in each round: ``calls`` back-to-back calls per round,
    rounds interleaved (``common.alternate``), ``ROUNDS`` rounds after a warm-up."""

    def loop(fn: Callable[[], Any]) -> Callable[[], None]:
        def run() -> None:
            for _ in range(calls):
                fn()

        return run

    rounds = alternate({n: loop(f) for n, f in fns.items()}, ROUNDS)
    return {n: [s / calls * 1e6 for s in v] for n, v in rounds.items()}


def medians(times: dict[str, list[float]]) -> dict[str, float]:
    return {n: median(v) for n, v in times.items()}


def dispatched_ops(fn: Callable[[], Any]) -> list[str]:
    """The ATen operations one call of ``fn`` dispatches, in order."""
    from torch.utils._python_dispatch import TorchDispatchMode

    ops: list[str] = []

    class Count(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # noqa: ANN001, ANN204
            ops.append(str(func.overloadpacket.__name__))
            return func(*args, **(kwargs or {}))

    with Count():
        fn()
    return ops


def run(k: int = 5, layers: int = 32) -> dict[str, Any]:
    import torch
    from torch import nn

    from hpr import EditorSet
    from hpr.editor import HPR
    from hpr.lm.architectures import fingerprint
    from hpr.lm.hooks import _output_hook, edit_block_outputs
    from hpr.lm.tiny import tiny_llama

    setup_threads(1)
    lin, x = nn.Linear(8, 8), torch.randn(1, 8)
    hooked = nn.Linear(8, 8)
    hooked.register_forward_hook(_output_hook(lambda h: h))
    with torch.no_grad():
        hook = per_call_us({"plain": lambda: lin(x), "hooked": lambda: hooked(x)}, 5000)

    model = tiny_llama(layers=layers).eval()  # the module tree of a `layers`-block model
    d = model.config.hidden_size
    chosen = [round((i + 1) * layers / (k + 1)) for i in range(k)]
    es = EditorSet({i: HPR(d) for i in chosen}, fingerprint(model), chosen)

    def enter(cm: Callable[[], Any]) -> Callable[[], None]:
        def f() -> None:
            with cm():
                pass

        return f

    enter_us = medians(
        per_call_us(
            {
                "apply": enter(lambda: es.apply(model)),
                "hooks_only": enter(lambda: edit_block_outputs(model, dict.fromkeys(chosen, lambda h: h))),
            },
            200,
        )
    )

    ops: dict[str, dict[str, Any]] = {}
    for act in (torch.float32, torch.bfloat16):
        for net in (torch.float32, torch.bfloat16):
            e = HPR(4096)
            e.angle.to(net)
            xd = torch.randn(32, 1, 4096).to(act)
            with torch.no_grad():
                e.edit(xd)  # builds the cached weights outside the count
                names = dispatched_ops(lambda e=e, xd=xd: e.edit(xd))
            views = {"view", "t", "slice", "unsqueeze", "_unsafe_view", "expand", "as_strided"}
            ops[f"activations {str(act)[6:]}, angle network {str(net)[6:]}"] = {
                "ops": len(names),
                "non_view_ops": sum(n not in views for n in names),
            }
    return {
        "benchmark": "host_cost",
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "hook_us": median([a - b for a, b in zip(hook["hooked"], hook["plain"], strict=True)]),  # paired
        "module_call_us": medians(hook),
        "apply_enter_exit_us": enter_us,
        "model_blocks": layers,
        "k": k,
        "edit_dispatched_ops_decode_32x1x4096": ops,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--k", type=int, default=5)
    ap.add_argument("--layers", type=int, default=32)
    ap.add_argument("--out", default=str(RESULTS / "host-cost.json"))
    a = ap.parse_args()
    res = run(a.k, a.layers)
    from hpr import _files

    _files.write_json(a.out, res)
    emit(res)


if __name__ == "__main__":
    main()

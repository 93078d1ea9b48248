"""Editing and recording hooks: context managers that edit or read activations of a model and
always clean up.

``edit_block_outputs`` edits the residual stream after chosen decoder blocks (HPR, Diff,
-AnglePred); ``edit_attention_heads`` edits the input of the attention output projection,
the concatenated head outputs (ITI). Every position that passes through the block is edited:
all positions of a scoring pass, and in ``generate()`` with a KV cache each new token once, at
its own position (cached positions are not recomputed, so they are never edited twice).
``record_block_outputs`` and ``record_attention_inputs`` read the same two places without changing
them (capture, ITI's head activations, norms).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import ExitStack, contextmanager
from functools import partial
from typing import Any

from torch import Tensor, nn
from torch.utils.hooks import RemovableHandle

from hpr.errors import EditorError
from hpr.lm.architectures import attn_out_proj, decoder_layers, num_layers
from hpr.lm.placement import execution_device

#: An edit maps activations ``(..., d)`` to activations of the same shape and dtype.
EditFn = Callable[[Tensor], Tensor]


def _place(edit: EditFn, module: nn.Module) -> EditFn:
    """Move an editor that is an ``nn.Module`` to the device the block it edits computes on."""
    device = execution_device(module)
    if isinstance(edit, nn.Module) and device is not None:
        edit.to(device)
    return edit


def _check_layers(model: nn.Module, layers: Mapping[int, Any]) -> None:
    n = num_layers(model)
    bad = [i for i in layers if not 0 <= int(i) < n]
    if bad:
        raise EditorError(
            f"layer index {bad} out of range for a model with {n} decoder blocks (0..{n - 1}); "
            "the editors were made for another model"
        )


def _output_hook(edit: EditFn) -> Callable[..., Any]:
    def hook(_module: nn.Module, _args: Any, output: Any) -> Any:
        if isinstance(output, Tensor):
            return edit(output)
        hidden = edit(output[0])
        return (hidden, *output[1:])

    return hook


def _input_hook(edit: EditFn) -> Callable[..., Any]:
    def hook(_module: nn.Module, args: tuple[Any, ...]) -> tuple[Any, ...]:
        return (edit(args[0]), *args[1:])

    return hook


@contextmanager
def _hooked(register: Iterable[Callable[[], RemovableHandle]]) -> Iterator[None]:
    """Call each registration, then remove every handle on exit (also when one of them fails)."""
    with ExitStack() as stack:
        for reg in register:
            stack.callback(reg().remove)
        yield


def block_output(output: Any) -> Tensor:
    """The hidden states of a decoder block's output (a tensor, or the first item of a tuple)."""
    return output if isinstance(output, Tensor) else output[0]


#: A reader is called with the layer index and the activations ``(batch, seq, width)`` it sees.
ReadFn = Callable[[int, Tensor], None]


@contextmanager
def record_block_outputs(
    model: nn.Module, layers: Iterable[int], on_output: ReadFn | None = None
) -> Iterator[dict[int, Tensor]]:
    """Record the output hidden states of decoder blocks ``layers`` at every forward inside the block.

    Yields a dict that holds, per layer, the latest output ``(batch, seq, d)``; ``on_output(layer,
    hidden)`` is also called at each forward. Registered inside a method's ``apply`` block, the
    hooks run after the method's own and see the edited output. Hooks are removed on exit.
    """
    lay = [int(i) for i in layers]
    _check_layers(model, dict.fromkeys(lay))
    blocks = decoder_layers(model)
    latest: dict[int, Tensor] = {}

    def make(layer: int) -> Callable[..., None]:
        def hook(_m: nn.Module, _a: Any, out: Any) -> None:
            h = block_output(out)
            latest[layer] = h
            if on_output is not None:
                on_output(layer, h)

        return hook

    with _hooked([partial(blocks[i].register_forward_hook, make(i)) for i in lay]):
        yield latest


@contextmanager
def record_attention_inputs(
    model: nn.Module, layers: Iterable[int], on_input: ReadFn | None = None
) -> Iterator[dict[int, Tensor]]:
    """Record the input of each block's attention output projection (the heads' outputs side by side,
    ``(batch, seq, num_heads * head_dim)``) at every forward inside the block, like
    ``record_block_outputs``."""
    lay = [int(i) for i in layers]
    _check_layers(model, dict.fromkeys(lay))
    latest: dict[int, Tensor] = {}

    def make(layer: int) -> Callable[..., None]:
        def hook(_m: nn.Module, args: tuple[Any, ...]) -> None:
            latest[layer] = args[0]
            if on_input is not None:
                on_input(layer, args[0])

        return hook

    with _hooked([partial(attn_out_proj(model, i).register_forward_pre_hook, make(i)) for i in lay]):
        yield latest


@contextmanager
def edit_block_outputs(model: nn.Module, edits: Mapping[int, EditFn]) -> Iterator[nn.Module]:
    """Apply ``edits[layer]`` to the output hidden states of each decoder block ``layer``.

    Hooks are removed on exit, also when the block raises.
    """
    _check_layers(model, edits)
    blocks = decoder_layers(model)

    def register(block: nn.Module, edit: EditFn) -> Callable[[], RemovableHandle]:
        return lambda: block.register_forward_hook(_output_hook(_place(edit, block)))

    with _hooked([register(blocks[int(layer)], edit) for layer, edit in edits.items()]):
        yield model


@contextmanager
def edit_attention_heads(model: nn.Module, edits: Mapping[int, EditFn]) -> Iterator[nn.Module]:
    """Apply ``edits[layer]`` to the input of block ``layer``'s attention output projection.

    That input has shape ``(batch, seq, num_heads * head_dim)``: the heads' outputs side by side.
    """
    _check_layers(model, edits)

    def register(proj: nn.Module, edit: EditFn) -> Callable[[], RemovableHandle]:
        return lambda: proj.register_forward_pre_hook(_input_hook(_place(edit, proj)))

    with _hooked([register(attn_out_proj(model, int(layer)), edit) for layer, edit in edits.items()]):
        yield model


__all__ = [
    "EditFn",
    "ReadFn",
    "block_output",
    "edit_attention_heads",
    "edit_block_outputs",
    "record_attention_inputs",
    "record_block_outputs",
]

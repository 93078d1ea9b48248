"""Editing hooks: context managers that edit activations of a model and always clean up.

``edit_block_outputs`` edits the residual stream after chosen decoder blocks (HPR, Diff,
-AnglePred); ``edit_attention_heads`` edits the input of the attention output projection,
the concatenated head outputs (ITI). Every position that passes through the block is edited:
all positions of a scoring pass, and in ``generate()`` with a KV cache each new token once, at
its own position (cached positions are not recomputed, so they are never edited twice).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import ExitStack, contextmanager
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.hooks import RemovableHandle

from .architectures import attn_out_proj, decoder_layers, num_layers
from .errors import EditorError

#: An edit maps activations ``(..., d)`` to activations of the same shape and dtype.
EditFn = Callable[[Tensor], Tensor]


def _device_of(module: nn.Module) -> torch.device | None:
    for p in module.parameters():
        return p.device
    return None


def _place(edit: EditFn, module: nn.Module) -> EditFn:
    """Move an editor that is an ``nn.Module`` to the device of the block it edits."""
    device = _device_of(module)
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

"""Editing hooks on the tiny random Llama: caching, padding, and guaranteed removal."""

from __future__ import annotations

import pytest
import torch

from hpr.editor import HPR
from hpr.editor_set import EditorSet
from hpr.errors import EditorError
from hpr.lm.architectures import decoder_layers, fingerprint
from hpr.lm.hooks import edit_block_outputs


def make_set(model: torch.nn.Module, layers: tuple[int, ...] = (1, 2), seed: int = 0) -> EditorSet:
    """Random editors that edit about half of the activations (probe through the origin)."""
    torch.manual_seed(seed)
    d = model.config.hidden_size
    eds = {i: HPR(d) for i in layers}
    return EditorSet(eds, fingerprint(model), list(layers), {"val_accuracy": {str(i): 0.5 for i in layers}})


def _hook_count(model: torch.nn.Module) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


def test_editing_changes_outputs_and_hooks_are_removed(tiny_model, tokenizer) -> None:
    ids = tokenizer(["The quick brown fox"], return_tensors="pt")["input_ids"]
    before = _hook_count(tiny_model)
    with torch.no_grad():
        base = tiny_model(ids).logits
        es = make_set(tiny_model)
        with es.apply(tiny_model):
            assert _hook_count(tiny_model) == before + 2
            edited = tiny_model(ids).logits
        after = tiny_model(ids).logits
    assert _hook_count(tiny_model) == before
    assert not torch.allclose(base, edited)
    torch.testing.assert_close(after, base, rtol=0, atol=0)


def test_hooks_removed_after_exception_in_block_and_in_editor(tiny_model, tokenizer) -> None:
    ids = tokenizer(["abc"], return_tensors="pt")["input_ids"]
    before = _hook_count(tiny_model)
    with pytest.raises(RuntimeError, match="boom"):
        with make_set(tiny_model).apply(tiny_model):
            raise RuntimeError("boom")
    assert _hook_count(tiny_model) == before

    def bad_edit(x: torch.Tensor) -> torch.Tensor:
        raise ValueError("editor failed")

    with pytest.raises(ValueError, match="editor failed"):
        with edit_block_outputs(tiny_model, {0: bad_edit}):
            tiny_model(ids)
    assert _hook_count(tiny_model) == before
    assert all(not b._forward_hooks for b in decoder_layers(tiny_model))


def test_layer_out_of_range_is_refused_and_leaves_no_hook(tiny_model) -> None:
    before = _hook_count(tiny_model)
    es = make_set(tiny_model, layers=(1, 7))
    with pytest.raises(EditorError, match="out of range"):
        with es.apply(tiny_model, check=False):
            pass
    with pytest.raises(EditorError, match="out of range"):
        with edit_block_outputs(tiny_model, {-1: lambda x: x}):
            pass
    assert _hook_count(tiny_model) == before


@pytest.mark.parametrize("layers", [(0,), (1, 3)])
def test_cached_and_uncached_generation_identical(tiny_model, tokenizer, layers) -> None:
    enc = tokenizer(["Hello there", "Why is the"], return_tensors="pt", padding=True, padding_side="left")
    es = make_set(tiny_model, layers=layers, seed=3)
    kw = dict(max_new_tokens=12, do_sample=False, pad_token_id=tokenizer.pad_token_id)
    with es.apply(tiny_model):
        cached = tiny_model.generate(**enc, use_cache=True, **kw)
        uncached = tiny_model.generate(**enc, use_cache=False, **kw)
    base = tiny_model.generate(**enc, use_cache=True, **kw)
    assert torch.equal(cached, uncached)
    assert not torch.equal(cached, base)  # the edit matters for these tokens


def test_generation_edits_each_new_token_once(tiny_model, tokenizer) -> None:
    """With a KV cache every position passes through an edited block exactly once."""
    seen: list[int] = []

    def count(x: torch.Tensor) -> torch.Tensor:
        seen.append(x.shape[1])
        return x

    ids = tokenizer(["abcd"], return_tensors="pt")["input_ids"]
    with edit_block_outputs(tiny_model, {2: count}):
        tiny_model.generate(ids, max_new_tokens=5, do_sample=False, use_cache=True, pad_token_id=tokenizer.pad_token_id)
    assert seen == [ids.shape[1], 1, 1, 1, 1]


@pytest.mark.parametrize("side", ["left", "right"])
def test_padded_batch_matches_single_examples(tiny_model, tokenizer, side) -> None:
    texts = ["A short one", "A much longer example sentence here", "mid length text"]
    es = make_set(tiny_model, layers=(0, 2), seed=5)
    enc = tokenizer(texts, return_tensors="pt", padding=True, padding_side=side)
    mask = enc["attention_mask"]
    pos = (mask.cumsum(-1) - 1).clamp_min(0)
    with torch.no_grad(), es.apply(tiny_model):
        batch = tiny_model(input_ids=enc["input_ids"], attention_mask=mask, position_ids=pos).logits
        for i, t in enumerate(texts):
            single = tiny_model(tokenizer([t], return_tensors="pt")["input_ids"]).logits[0]
            rows = batch[i][mask[i].bool()]
            torch.testing.assert_close(rows, single, rtol=1e-5, atol=1e-5)


def test_hidden_states_are_edited_exactly_as_editor_says(tiny_model, tokenizer) -> None:
    ids = tokenizer(["edit me please"], return_tensors="pt")["input_ids"]
    es = make_set(tiny_model, layers=(1,), seed=2)
    with torch.no_grad():
        h = tiny_model(ids, output_hidden_states=True).hidden_states[2]  # output of block 1
        want = es.editors[1].edit(h)
        got: list[torch.Tensor] = []
        hook = decoder_layers(tiny_model)[2].register_forward_pre_hook(lambda m, a: got.append(a[0]))
        try:
            with es.apply(tiny_model):
                tiny_model(ids)
        finally:
            hook.remove()
    torch.testing.assert_close(got[0], want, rtol=0, atol=0)
    assert not torch.equal(want, h)

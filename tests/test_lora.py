"""LoRA baseline on the tiny random Llama: fit, apply/remove bit for bit, save/load."""

from __future__ import annotations

import pytest
import torch

from hpr.data.records import Record
from hpr.errors import EditorError, ParameterError
from hpr.methods.lora import LoRA, _collate, fit_lora, sft_examples
from tests.conftest import tiny_llama


def records(n: int, offset: int = 0) -> list[Record]:
    return [
        Record(
            id=f"q{i}",
            prompt=f"Is {i} odd?",
            choices=("no" if i % 2 == 0 else "yes", "perhaps", "sure"),
            correct=(0, 2),
            best=0,
            mc1=(0, 1),
        )
        for i in range(offset, offset + n)
    ]


@pytest.fixture
def fitted(tiny_model, tokenizer) -> LoRA:
    return fit_lora(
        model=tiny_model,
        tokenizer=tokenizer,
        train=records(6),
        val=records(2, 50),
        max_steps=4,
        batch_size=4,
        lr=5e-2,
        progress=False,
    )


def batch(tokenizer):
    return tokenizer(["Q: hello\nA: world", "Q: hi\nA:  there!"], return_tensors="pt", padding=True)


def test_sft_examples_mask_the_prompt(tokenizer):
    ex = sft_examples(records(2), tokenizer)
    assert len(ex) == 4  # two correct answers per question
    assert len(sft_examples(records(2), tokenizer, answers="best")) == 2
    b = _collate(ex[:2], 0, torch.device("cpu"))
    ids, plen = ex[0]
    assert (b["labels"][0, :plen] == -100).all()
    assert torch.equal(b["labels"][0, plen : len(ids)], torch.tensor(ids[plen:]))
    assert (b["labels"][0, len(ids) :] == -100).all()
    with pytest.raises(ParameterError):
        sft_examples(records(1), tokenizer, answers="all")


def test_fit_leaves_model_unchanged_and_learns(tiny_model, tokenizer):
    ids = batch(tokenizer)
    base = tiny_model(**ids).logits
    flags = [p.requires_grad for p in tiny_model.parameters()]
    # val = train: the fitted adapter must lower the loss on what it was trained on
    m = fit_lora(
        model=tiny_model,
        tokenizer=tokenizer,
        train=records(6),
        val=records(6),
        max_steps=5,
        epochs=2,
        batch_size=4,
        lr=2e-2,
        progress=False,
    )
    assert torch.equal(tiny_model(**ids).logits, base)
    assert [p.requires_grad for p in tiny_model.parameters()] == flags
    assert not tiny_model.training
    assert m.config["steps"] == 5  # min(max_steps, 2 epochs x 3 batches)
    assert m.config["val_loss_after"] < m.config["val_loss_before"]


def test_apply_changes_and_restores_bit_for_bit(fitted, tiny_model, tokenizer):
    ids = batch(tokenizer)
    names = [n for n, _ in tiny_model.named_modules()]
    base = tiny_model(**ids).logits
    with fitted.apply(tiny_model) as m:
        assert m is tiny_model
        edited = tiny_model(**ids).logits
    assert not torch.allclose(base, edited)
    assert torch.equal(tiny_model(**ids).logits, base)
    assert [n for n, _ in tiny_model.named_modules()] == names
    with pytest.raises(RuntimeError), fitted.apply(tiny_model):
        raise RuntimeError("boom")
    assert torch.equal(tiny_model(**ids).logits, base)
    assert [n for n, _ in tiny_model.named_modules()] == names


def test_batch_edits_every_element(fitted, tiny_model, tokenizer):
    texts = ["Q: a\nA: b", "Q: ccc\nA: d", "Q: e\nA: ff"]
    ids = tokenizer(texts, return_tensors="pt", padding=True)
    base = tiny_model(**ids).logits
    with fitted.apply(tiny_model):
        together = tiny_model(**ids).logits
        for i, t in enumerate(texts):
            alone = tiny_model(**tokenizer([t], return_tensors="pt")).logits[0]
            n = alone.shape[0]
            assert torch.allclose(together[i, :n], alone, atol=1e-5)
            assert not torch.allclose(together[i, :n], base[i, :n])


def test_save_load_round_trip(fitted, tiny_model, tokenizer, tmp_path):
    from peft import PeftModel

    ids = batch(tokenizer)
    fitted.save(tmp_path / "lora")
    loaded = LoRA.load(tmp_path / "lora", tiny_model)
    with fitted.apply(tiny_model):
        a = tiny_model(**ids).logits
    with loaded.apply(tiny_model):
        b = tiny_model(**ids).logits
    assert torch.equal(a, b)
    # The adapter directory is a standard peft adapter.
    pm = PeftModel.from_pretrained(tiny_llama(), str(tmp_path / "lora"))
    assert torch.allclose(pm(**ids).logits, a, atol=1e-5)


def test_mismatched_model_refused(fitted, tmp_path):
    other = tiny_llama(layers=3)
    with pytest.raises(EditorError), fitted.apply(other):
        pass
    fitted.save(tmp_path / "lora")
    with pytest.raises(EditorError):
        LoRA.load(tmp_path / "lora", other)

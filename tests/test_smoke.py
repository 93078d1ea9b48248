import torch

from hpr import EditorSet
from hpr.editor import HPR
from hpr.lm.architectures import fingerprint


def test_editor_set_applies_and_restores(tiny_model, tokenizer):
    ids = tokenizer(["hello world", "hi"], return_tensors="pt", padding=True)
    base = tiny_model(**ids).logits
    torch.manual_seed(1)
    eds = {i: HPR(64) for i in range(4)}
    es = EditorSet(eds, fingerprint(tiny_model), selected=[1, 2])
    with es.apply(tiny_model):
        edited = tiny_model(**ids).logits
    after = tiny_model(**ids).logits
    assert not torch.allclose(base, edited)
    assert torch.equal(base, after)

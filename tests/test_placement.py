"""``hpr.lm.placement``: the input device and parameter values of models that accelerate offloaded."""

from __future__ import annotations

import pytest
import torch
from accelerate import dispatch_model

from hpr.errors import ModelError
from hpr.lm.placement import execution_device, model_device, parameter_values
from hpr.lm.tiny import tiny_llama


def test_offloaded_embeddings_and_blocks(tmp_path) -> None:
    ref = tiny_llama()
    model = tiny_llama()
    dmap = {"model.embed_tokens": "disk", "model.rotary_emb": "cpu", "model.norm": "cpu", "lm_head": "cpu"}
    dmap |= {f"model.layers.{i}": "disk" if i % 2 else "cpu" for i in range(4)}
    model = dispatch_model(model, dmap, main_device="cpu", offload_dir=str(tmp_path))
    emb = model.get_input_embeddings()
    assert emb.weight.device.type == "meta"
    assert execution_device(emb) == torch.device("cpu")  # from its accelerate hook
    assert model_device(model) == torch.device("cpu")
    got = dict(parameter_values(model))
    want = dict(ref.named_parameters())
    assert got.keys() == want.keys()
    assert all(torch.equal(got[k], want[k]) for k in want)
    ids = torch.tensor([[5, 6, 7]])
    with torch.no_grad():
        torch.testing.assert_close(model(ids).logits, ref(ids).logits, rtol=0, atol=0)


def test_meta_parameters_without_weights_are_refused() -> None:
    with torch.device("meta"):
        model = tiny_llama()
    assert execution_device(model) is None and model_device(model) == torch.device("cpu")
    with pytest.raises(ModelError, match="meta device and no accelerate hook"):
        dict(parameter_values(model))


def test_placement_kwargs_checks_before_loading(tmp_path) -> None:
    from hpr.errors import ParameterError
    from hpr.lm.placement import placement_kwargs

    assert placement_kwargs(None, None) == {}
    assert placement_kwargs("auto", None) == {"device_map": "auto"}
    assert placement_kwargs("auto", tmp_path / "new") == {"device_map": "auto", "offload_folder": str(tmp_path / "new")}
    (tmp_path / "file").write_text("x")
    with pytest.raises(ParameterError, match="is a file; pass a folder"):
        placement_kwargs("auto", tmp_path / "file")
    with pytest.raises(ParameterError, match="only used with a device_map"):
        placement_kwargs(None, tmp_path)

"""Device tests: every test runs on the CPU here and on CUDA with ``pytest -m gpu`` on a GPU machine.

Tiny random models in float32 and bfloat16. Each result is compared with an independent
computation (a float64 dense reference, the unedited run, one-at-a-time scoring, or a CPU float32
run), never with the same code path. bfloat16 tolerances are loose (8 mantissa bits) but each test
also checks that the effect it measures is far larger than its tolerance.
"""

from __future__ import annotations

import copy
import inspect
import math
from contextlib import nullcontext
from typing import Any

import pytest
import torch
from torch import Tensor, nn
from transformers import LlamaForCausalLM

from hpr.data.records import Record
from hpr.editor import HPR
from hpr.editor_set import EditorSet
from hpr.evaluation.scoring import Request, score, score_full
from hpr.householder import pseudo_rotate, reflect
from hpr.lm.architectures import decoder_layers, fingerprint
from hpr.lm.capture import run_capture
from hpr.lm.graphs import MAX_SEEN, GraphedEdit
from hpr.lm.kv import cache_arg
from hpr.lm.placement import model_device
from hpr.lm.tiny import byte_tokenizer, tiny_llama
from hpr.methods.diff import Diff
from hpr.methods.diff_nets import diff_net
from hpr.methods.iti import ITI
from hpr.methods.lora import fit_lora
from hpr.train import train

CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
DEVICES = ["cpu", pytest.param("cuda", marks=[pytest.mark.gpu, CUDA])]
DTYPES = [torch.float32, torch.bfloat16]
#: Relative error allowed against a float64 reference (bf16 rounds to 2^-9 relative).
REL = {torch.float32: 2e-5, torch.bfloat16: 1.5e-2}


@pytest.fixture(autouse=True, scope="module")
def _one_cpu_thread():  # noqa: ANN202
    """Tiny models run fastest on one CPU thread (several threads fight over a busy CI machine's
    cores: 30x slower); restored after this module."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _model(device: str, dtype: torch.dtype, **kw: int) -> nn.Module:
    return tiny_llama(**kw).to(device=device, dtype=dtype)


def _editors(model: nn.Module, layers: tuple[int, ...], seed: int = 0) -> EditorSet:
    """Random float32 editors (probe through the origin: about half the activations are edited)."""
    torch.manual_seed(seed)
    eds = {i: HPR(model.config.hidden_size, angle_layers=2) for i in layers}
    return EditorSet(eds, fingerprint(model), list(layers))


def _row_err(got: Tensor, want: Tensor) -> float:
    """Largest ``|got - want| / |want|`` over rows, in float64 on the CPU."""
    g, w = got.detach().cpu().double(), want.detach().cpu().double()
    return float(((g - w).norm(dim=-1) / w.norm(dim=-1)).max())


# --- kernels against a dense float64 Householder reference -----------------------------------


def _dense_h(w: Tensor) -> Tensor:
    w64 = w.double()
    return torch.eye(len(w), dtype=torch.float64) - 2.0 * torch.outer(w64, w64) / (w64 @ w64)


def _law_of_sines(x64: Tensor, hx64: Tensor, theta64: Tensor) -> Tensor:
    """The paper's closed form ``sin(t)/sin(g) Hx + sin(g - t)/sin(g) x``, g = angle(x, Hx)."""
    cos_g = (x64 * hx64).sum(-1) / (x64.norm(dim=-1) * hx64.norm(dim=-1))
    g = torch.arccos(cos_g.clamp(-1.0, 1.0))
    a = (torch.sin(theta64) / torch.sin(g)).unsqueeze(-1)
    b = (torch.sin(g - theta64) / torch.sin(g)).unsqueeze(-1)
    return a * hx64 + b * x64


def _tilted_rows(n: int, w: Tensor, g: torch.Generator) -> Tensor:
    """Rows at +-30 degrees from the hyperplane (alternating sides): far from every tolerance."""
    wh = w / w.norm()
    x = torch.randn(n, len(w), generator=g) * 3.0
    perp = x - (x @ wh).unsqueeze(-1) * wh
    side = torch.tensor([1.0 if i % 2 else -1.0 for i in range(n)]).unsqueeze(-1)
    return perp + side * 0.5 * perp.norm(dim=-1, keepdim=True) * wh


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("device", DEVICES)
def test_kernels_match_dense_float64(device: str, dtype: torch.dtype) -> None:
    g = torch.Generator().manual_seed(0)
    d, n = 257, 32
    w = torch.randn(d, generator=g)
    x = _tilted_rows(n, w, g).to(dtype)  # the input as the device sees it
    theta = torch.rand(n, generator=g) * math.pi
    x64 = x.double()
    hx64 = x64 @ _dense_h(w).T
    rot64 = _law_of_sines(x64, hx64, theta.double())
    xd, wd = x.to(device), w.to(device)
    got_h, got_r = reflect(xd, wd), pseudo_rotate(xd, wd, theta.to(device))
    for got in (got_h, got_r):
        assert got.dtype == dtype and got.device.type == device
    tol = REL[dtype]
    assert _row_err(got_h, hx64) < tol
    assert _row_err(got_r, rot64) < tol
    assert _row_err(x64, hx64) > 50 * tol and _row_err(x64, rot64) > 50 * tol  # both move x


@pytest.mark.parametrize("use_angle", [True, False])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("device", DEVICES)
def test_editor_edit_matches_dense_float64(device: str, dtype: torch.dtype, use_angle: bool) -> None:
    torch.manual_seed(1)
    d = 64
    editor = HPR(d, angle_layers=3, use_angle=use_angle)
    w = editor.normal.detach().clone()
    g = torch.Generator().manual_seed(2)
    x = _tilted_rows(40, w, g).to(dtype)
    x64 = x.double()
    neg = (x64 @ w.double()) < 0
    assert 0 < int(neg.sum()) < len(x)
    ref_net = copy.deepcopy(editor).double()
    with torch.no_grad():
        theta64 = math.pi * torch.sigmoid(ref_net.angle(x64).squeeze(-1))
    hx64 = x64 @ _dense_h(w).T
    moved = _law_of_sines(x64, hx64, theta64) if use_angle else hx64
    want = torch.where(neg.unsqueeze(-1), moved, x64)
    got = editor.to(device).edit(x.to(device))
    assert got.dtype == dtype and got.device.type == device
    assert _row_err(got[neg.to(device)], want[neg]) < REL[dtype]
    assert torch.equal(got[~neg.to(device)].cpu(), x[~neg])  # positives come back bit for bit
    assert _row_err(x64[neg], want[neg]) > 50 * REL[dtype]


# --- generate() with and without the KV cache -----------------------------------------------


def _first_divergence(a: Tensor, b: Tensor) -> int:
    diff = (a != b).nonzero()
    return int(diff[0]) if len(diff) else len(a)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("device", DEVICES)
def test_generate_with_and_without_kv_cache(device: str, dtype: torch.dtype) -> None:
    """Same tokens with and without the cache while editing. In bfloat16 the two paths round
    differently, so tokens may part only at a near-tie of the top two logits; up to there the
    logits must agree."""
    tok = byte_tokenizer()
    model = _model(device, dtype)
    enc = tok(["Hello there", "Why is the sky"], return_tensors="pt", padding=True, padding_side="left").to(device)
    kw = dict(
        max_new_tokens=10,
        do_sample=False,
        pad_token_id=tok.pad_token_id,
        return_dict_in_generate=True,
        output_logits=True,
    )
    with _editors(model, (0, 2), seed=3).apply(model):
        cached = model.generate(**enc, use_cache=True, **kw)
        uncached = model.generate(**enc, use_cache=False, **kw)
    base = model.generate(**enc, use_cache=True, **kw)
    n = enc["input_ids"].shape[1]
    lc = torch.stack(cached.logits, 1).float().cpu()  # (B, T, V)
    lu = torch.stack(uncached.logits, 1).float().cpu()
    lb = torch.stack(base.logits, 1).float().cpu()
    tol = 1e-4 if dtype == torch.float32 else 0.15 * float(lc.abs().max())
    for row in range(len(lc)):
        t = _first_divergence(cached.sequences[row, n:].cpu(), uncached.sequences[row, n:].cpu())
        if dtype == torch.float32:
            assert t == lc.shape[1], f"row {row}: tokens differ at step {t}"
        torch.testing.assert_close(lc[row, : t + 1], lu[row, : t + 1], rtol=0, atol=tol)
        if t < lc.shape[1]:  # only a near-tie may flip the greedy choice
            top2 = lc[row, t].topk(2).values
            assert float(top2[0] - top2[1]) < 2 * tol, f"row {row}: tokens differ at step {t} without a tie"
    assert float((lc[:, 0] - lb[:, 0]).abs().max()) > 5 * tol  # the edit changes the first step


# --- the scorer: mixed-length batches equal one request at a time ---------------------------

PRIMER = "Q: A shared primer for every question.\nA: It is.\n\n"


def _requests() -> list[Request]:
    return [
        Request(
            f"r{i}",
            f"{PRIMER}Q: question {i}{'?' * (3 * i)}\nA:",
            (" yes", " no, never" + "!" * i, " m", " it depends on the day" + " x" * i),
        )
        for i in range(5)
    ]


def _maxdiff(a: list[list[float]], b: list[list[float]]) -> float:
    return max(abs(x - y) for ra, rb in zip(a, b, strict=True) for x, y in zip(ra, rb, strict=True))


#: Log-likelihood (nats, summed over up to ~25 tokens) agreement between scoring paths.
LL_TOL = {torch.float32: 1e-4, torch.bfloat16: 0.1}


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("device", DEVICES)
def test_scorer_mixed_length_batches_equal_single(device: str, dtype: torch.dtype) -> None:
    tok = byte_tokenizer()
    model = _model(device, dtype)
    reqs = _requests()
    eds = _editors(model, (1, 2))
    batched = score(model, tok, reqs, method=eds, batch_size=4, progress=False)
    single = [score(model, tok, [r], method=eds, batch_size=1, progress=False)[0] for r in reqs]
    full = score_full(model, tok, reqs, method=eds)
    base = score(model, tok, reqs, batch_size=4, progress=False)
    tol = LL_TOL[dtype]
    assert _maxdiff(batched, single) < tol
    assert _maxdiff(batched, full) < tol
    assert _maxdiff(batched, base) > 4 * tol  # the editors change the scores
    spread = max(max(r) - min(r) for r in full)
    assert spread > 20 * tol  # choices differ by far more than the tolerance


class _OtherCacheName(LlamaForCausalLM):
    """A Llama whose ``forward`` takes the KV cache under the other name than this transformers'
    (``past_key_values`` in 5.24, ``cache`` in 5.17): the scorer must pass it under that name."""

    OWN = "cache" if "cache" in inspect.signature(LlamaForCausalLM.forward).parameters else "past_key_values"
    OTHER = "past_key_values" if OWN == "cache" else "cache"

    def forward(
        self,
        input_ids: Tensor | None = None,
        attention_mask: Tensor | None = None,  # type: ignore[override]
        **kw: Any,
    ) -> Any:
        kw.pop(self.OWN, None)  # ignored, as a model ignores a cache under a name it does not take
        if self.OTHER in kw:
            kw[self.OWN] = kw.pop(self.OTHER)
        return super().forward(input_ids=input_ids, attention_mask=attention_mask, **kw)


_OtherCacheName.forward.__signature__ = inspect.Signature(
    [  # type: ignore[attr-defined]
        inspect.Parameter(n, inspect.Parameter.POSITIONAL_OR_KEYWORD, default=None)
        for n in ("self", "input_ids", "attention_mask", _OtherCacheName.OTHER, "use_cache", "logits_to_keep")
    ]
)


@pytest.mark.parametrize("device", DEVICES)
def test_scorer_passes_the_cache_under_the_models_name(device: str) -> None:
    """transformers 5.17 names the argument ``past_key_values``, 5.24 ``cache``; a model given the
    wrong name ignores the cache (the 5.17 failure). Both names give the reference scores."""
    tok = byte_tokenizer()
    model = tiny_llama()
    other = _OtherCacheName(model.config).eval()
    other.load_state_dict(model.state_dict())
    model.to(device)
    other.to(device)
    reqs = _requests()[:3]
    want = score_full(model, tok, reqs)
    assert cache_arg(model) == _OtherCacheName.OWN and cache_arg(other) == _OtherCacheName.OTHER
    for m in (model, other):
        assert _maxdiff(score(m, tok, reqs, batch_size=2, progress=False), want) < 1e-4


# --- capture -> train -> score ----------------------------------------------------------------

RECORDS = [
    Record(
        f"q{i}",
        f"Is {i} an odd number?",
        ("no" if i % 2 == 0 else "yes", "perhaps", "never ever"),
        (0,),
        best=0,
        mc1=(0, 1, 2),
    )
    for i in range(8)
]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("device", DEVICES)
def test_capture_train_score(device: str, dtype: torch.dtype) -> None:
    tok = byte_tokenizer()
    model = _model(device, dtype)
    cap = run_capture(model, tok, RECORDS, layers=[1, 2], prompt_format="qa", progress=False)
    ref = run_capture(tiny_llama(), tok, RECORDS, layers=[1, 2], prompt_format="qa", progress=False)
    assert cap.data.dtype == (torch.bfloat16 if dtype == torch.bfloat16 else torch.float32)
    act_tol = 1e-4 if dtype == torch.float32 else 0.05
    assert _row_err(cap.data.reshape(-1, cap.hidden_size), ref.data.reshape(-1, cap.hidden_size)) < act_tol
    # keep="last": per-epoch selection could pick another epoch on another device over one token
    # that rounding moves across a hyperplane, which says nothing about the training itself
    kw = dict(epochs=2, batch_size=8, angle_layers=2, k=2, keep="last", progress=False)
    eds = train(cap, device=device, **kw)
    assert sorted(eds.selected) == [1, 2]
    if dtype == torch.float32:  # the same data trained on the CPU gives the same editors
        eds_cpu = train(ref, device="cpu", **kw)
        for i in (1, 2):
            torch.testing.assert_close(eds.editors[i].normal, eds_cpu.editors[i].normal, rtol=1e-3, atol=1e-4)
    reqs = [Request(r.id, f"Q: {r.prompt}\nA:", tuple(" " + c for c in r.choices)) for r in RECORDS[:4]]
    edited = score(model, tok, reqs, method=eds, batch_size=3, progress=False)
    full = score_full(model, tok, reqs, method=eds)
    base = score(model, tok, reqs, batch_size=3, progress=False)
    # Trained probes put some activations near their hyperplane, where bf16 rounding can flip the
    # edit decision of one token: a looser bound than for the random editors above.
    tol = LL_TOL[dtype] * (1 if dtype == torch.float32 else 3)
    assert _maxdiff(edited, full) < tol
    assert _maxdiff(edited, base) > 2 * tol
    assert eds.editors[1].normal.device.type == device  # the hooks moved the editors to the model


# --- ITI, Diff and LoRA: apply edits, removal restores bit for bit ---------------------------


def _batch(device: str) -> dict[str, Tensor]:
    tok = byte_tokenizer()
    enc = tok(["Q: hello\nA: world", "Q: hi\nA:  there!"], return_tensors="pt", padding=True)
    return {k: v.to(device) for k, v in enc.items()}


def _grab(seen: dict[str, Tensor], name: str, pre: bool):  # noqa: ANN202
    if pre:
        return lambda _m, a: seen.__setitem__(name, a[0].detach().clone())
    return lambda _m, _a, o: seen.__setitem__(name, (o[0] if isinstance(o, tuple) else o).detach().clone())


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("device", DEVICES)
def test_iti_apply_and_remove(device: str, dtype: torch.dtype) -> None:
    model = _model(device, dtype)
    ids = _batch(device)
    g = torch.Generator().manual_seed(0)
    dirs = torch.randn(2, 16, generator=g)
    iti = ITI(
        [(1, 0), (1, 3)],
        dirs / dirs.norm(dim=-1, keepdim=True),
        torch.tensor([2.0, 3.0]),
        fingerprint(model),
        num_heads=4,
        head_dim=16,
        alpha=5.0,
    )
    proj = model.model.layers[1].self_attn.o_proj
    seen: dict[str, Tensor] = {}
    with torch.no_grad():
        base = model(**ids).logits
        first = proj.register_forward_pre_hook(_grab(seen, "before", pre=True))  # runs before the edit
        with iti.apply(model):
            last = proj.register_forward_pre_hook(_grab(seen, "after", pre=True))  # sees the edit
            edited = model(**ids).logits
        first.remove()
        last.remove()
        after = model(**ids).logits
    shift = torch.zeros(64, dtype=torch.float64)
    for (_, head), dvec, s in zip(iti.heads, iti.directions, iti.sigmas, strict=True):
        shift[head * 16 : (head + 1) * 16] += 5.0 * float(s) * dvec.double()
    delta = (seen["after"].double() - seen["before"].double()).cpu()
    scale = float(seen["before"].abs().max()) + float(shift.abs().max())
    atol = 1e-6 * scale if dtype == torch.float32 else 1e-2 * scale
    torch.testing.assert_close(delta, shift.expand_as(delta), rtol=0, atol=atol)
    assert float(shift.abs().max()) > 20 * atol
    assert not torch.allclose(edited, base)
    assert torch.equal(after, base)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("device", DEVICES)
def test_diff_apply_and_remove(device: str, dtype: torch.dtype) -> None:
    model = _model(device, dtype)
    ids = _batch(device)
    torch.manual_seed(1)
    method = Diff({i: diff_net(64) for i in range(4)}, fingerprint(model), [1, 2])
    block = decoder_layers(model)[2]
    seen: dict[str, Tensor] = {}
    with torch.no_grad():
        base = model(**ids).logits
        first = block.register_forward_hook(_grab(seen, "before", pre=False))
        with method.apply(model):
            last = block.register_forward_hook(_grab(seen, "after", pre=False))
            edited = model(**ids).logits
        first.remove()
        last.remove()
        after = model(**ids).logits
        net64 = copy.deepcopy(method.nets[2]).cpu().double()
        a64 = seen["before"].cpu().double()
        want = a64 + net64(a64)
    assert _row_err(seen["after"].reshape(-1, 64), want.reshape(-1, 64)) < REL[dtype]
    assert _row_err(a64.reshape(-1, 64), want.reshape(-1, 64)) > 20 * REL[dtype]
    assert not torch.allclose(edited, base)
    assert torch.equal(after, base)


def _merged_lora_copy(model: nn.Module, state: dict[str, Tensor], scaling: float) -> nn.Module:
    """A float64 CPU copy of ``model`` with ``W + scaling B A`` for every adapted linear layer."""
    ref = copy.deepcopy(model).cpu().double()
    mods = dict(ref.named_modules())
    n = 0
    for key, a in state.items():
        if ".lora_A." not in key:
            continue
        path = key.split(".lora_A.")[0].removeprefix("base_model.model.")
        b = state[key.replace(".lora_A.", ".lora_B.")]
        with torch.no_grad():
            mods[path].weight += scaling * (b.double() @ a.double())
        n += 1
    assert n > 0
    return ref


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("device", DEVICES)
def test_lora_apply_and_remove(device: str, dtype: torch.dtype) -> None:
    tok = byte_tokenizer()
    model = _model(device, dtype)
    lora = fit_lora(
        model=model, tokenizer=tok, train=RECORDS[:4], val=[], max_steps=3, batch_size=4, lr=5e-2, progress=False
    )
    assert lora.config["train_loss_last"] == lora.config["train_loss_last"]  # not NaN
    ids = _batch(device)
    scaling = lora.adapter_config["lora_alpha"] / lora.adapter_config["r"]
    ref = _merged_lora_copy(model, lora.state, scaling)
    with torch.no_grad():
        base = model(**ids).logits
        with lora.apply(model):
            edited = model(**ids).logits
        after = model(**ids).logits
        want = ref(**{k: v.cpu() for k, v in ids.items()}).logits
    mask = ids["attention_mask"].bool().cpu()
    tol = REL[dtype] * 10 if dtype == torch.bfloat16 else 1e-4
    assert _row_err(edited.cpu()[mask], want[mask]) < tol
    assert _row_err(base.cpu()[mask], want[mask]) > 5 * tol  # the adapter matters
    assert torch.equal(after, base)


# --- a model split over two devices -----------------------------------------------------------


def _saved_tiny(tmp_path) -> str:  # noqa: ANN001
    tiny_llama().save_pretrained(tmp_path / "m")
    byte_tokenizer().save_pretrained(tmp_path / "m")
    return str(tmp_path / "m")


def _device_map(first: Any, rest: Any) -> dict[str, Any]:
    """Embeddings and blocks 0-1 on ``first``; blocks 2-3, the final norm and the head on ``rest``."""
    return {
        "model.embed_tokens": first,
        "model.rotary_emb": first,
        "model.layers.0": first,
        "model.layers.1": first,
        "model.layers.2": rest,
        "model.layers.3": rest,
        "model.norm": rest,
        "lm_head": rest,
    }


def _same_as_one_device(split: nn.Module, ref: nn.Module, edited_device: dict[int, str]) -> None:
    """Editors on blocks 1 and 2 of ``split`` give the generations, scores, captured activations and
    ITI head activations of the same editors on ``ref`` (one device), each editor following the
    device its block computes on (``edited_device``)."""
    from hpr.methods.iti_heads import head_activations

    tok = byte_tokenizer()
    eds, eds_ref = _editors(split, (1, 2), seed=4), _editors(ref, (1, 2), seed=4)
    enc = tok(["Hello there", "Why is the sky"], return_tensors="pt", padding=True, padding_side="left")
    kw = dict(max_new_tokens=8, do_sample=False, pad_token_id=tok.pad_token_id)
    with eds.apply(split):
        got = split.generate(**{k: v.to(model_device(split)) for k, v in enc.items()}, **kw)
        for layer, dev in edited_device.items():  # each editor follows its block
            assert eds.editors[layer].normal.device.type == dev
    with eds_ref.apply(ref):
        want = ref.generate(**enc, **kw)
    base = ref.generate(**enc, **kw)
    assert torch.equal(got.cpu(), want)
    assert not torch.equal(want, base)
    reqs = _requests()
    scores = score(split, tok, reqs, method=eds, batch_size=3, progress=False)
    ref_scores = score(ref, tok, reqs, method=eds_ref, batch_size=3, progress=False)
    assert _maxdiff(scores, ref_scores) < 1e-4
    assert _maxdiff(ref_scores, score(ref, tok, reqs, batch_size=3, progress=False)) > 1e-2
    cap = run_capture(split, tok, RECORDS[:4], layers=[1, 2], prompt_format="qa", progress=False)
    cap_ref = run_capture(ref, tok, RECORDS[:4], layers=[1, 2], prompt_format="qa", progress=False)
    assert cap.data.device.type == "cpu"
    assert _row_err(cap.data.reshape(-1, cap.hidden_size), cap_ref.data.reshape(-1, cap.hidden_size)) < 1e-4
    texts = ["Q: hello\nA: world", "Q: hi\nA:  there!"]
    heads = head_activations(split, tok, texts, progress=False)
    heads_ref = head_activations(ref, tok, texts, progress=False)
    assert _row_err(heads.flatten(1), heads_ref.flatten(1)) < 1e-4


@pytest.mark.parametrize("device", DEVICES)
def test_device_map_split_follows_each_block(device: str, tmp_path) -> None:
    """Blocks 0-1 on ``device`` and blocks 2-3 computing on the CPU (accelerate's ``dispatch_model``
    with the CPU as main device, so the CPU blocks are not offloaded to the GPU; on a CPU-only
    machine both halves are the CPU, which still checks the test itself): everything equals the
    model on one device."""
    from accelerate import dispatch_model

    from hpr.lm.models import load_model

    path = _saved_tiny(tmp_path)
    first = 0 if device == "cuda" else "cpu"
    split, _ = load_model(path, device="cpu", dtype="float32")
    split = dispatch_model(split, _device_map(first, "cpu"), main_device="cpu")
    ref, _ = load_model(path, device="cpu", dtype="float32")
    assert next(decoder_layers(split)[1].parameters()).device.type == device
    assert next(decoder_layers(split)[2].parameters()).device.type == "cpu"
    assert model_device(split).type == device
    _same_as_one_device(split, ref, {1: device, 2: "cpu"})


@pytest.mark.parametrize("device", DEVICES)
def test_offloaded_blocks(device: str, tmp_path) -> None:
    """Blocks 2-3 offloaded, as a ``device_map`` does with a model too large for the GPU: their
    parameters sit on the meta device and accelerate brings the weights in at each forward (on CUDA:
    ``load_model(device_map=...)`` with those blocks on ``"cpu"``; here: on ``"disk"``, the only
    offload a CPU-only machine has). Inputs go to the execution device, the weights digest (cache
    keys) reads the kept weights, and everything equals the model on one device."""
    from hpr.lm.architectures import weights_digest
    from hpr.lm.models import load_model

    path = _saved_tiny(tmp_path)
    rest = "cpu" if device == "cuda" else "disk"
    split, _ = load_model(path, device_map=_device_map(0 if device == "cuda" else "cpu", rest), dtype="float32")
    ref, _ = load_model(path, device="cpu", dtype="float32")
    assert next(decoder_layers(split)[2].parameters()).device.type == "meta"
    assert model_device(split).type == device
    assert weights_digest(split) == weights_digest(ref)
    _same_as_one_device(split, ref, {1: device, 2: device})


# --- CUDA-graph replay of the edit at recurring shapes ------------------------------------------


def _eager_fn(editor: HPR):  # noqa: ANN202
    from hpr.editor import edit_with

    cached = editor._cached()
    return lambda x: edit_with(x, cached, editor.use_angle)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("device", DEVICES)
def test_graphed_edit_replays_recurring_shapes(device: str, dtype: torch.dtype) -> None:
    """Same values as the eager edit for every call; on CUDA one graph per recurring few-row shape
    (captured at its second input, the least recently used dropped past ``max_graphs``), none for
    large inputs or inputs that need gradients; on the CPU never a graph."""
    torch.manual_seed(5)
    editor = HPR(64, angle_layers=2).to(device)
    eager = _eager_fn(editor)
    graphed = GraphedEdit(eager, max_rows=16, max_graphs=2)
    g = torch.Generator().manual_seed(6)
    shapes = [(4, 1, 64), (4, 1, 64), (4, 1, 64), (2, 1, 64), (2, 1, 64), (1, 1, 64), (1, 1, 64), (4, 8, 64)]
    outs, edited, rows = [], 0, 0
    for shape in shapes:
        x = torch.randn(shape, generator=g).to(device=device, dtype=dtype)
        got = graphed(x)
        want = eager(x)
        assert got.dtype == x.dtype and got.shape == x.shape
        torch.testing.assert_close(got, want, rtol=0, atol=0)
        edited += int(((got.float() - x.float()).abs().amax(-1) > 1e-3).sum())
        rows += x.numel() // 64
        outs.append((got, want))
    assert 0.25 * rows < edited < 0.75 * rows  # about half of the rows are edited
    for got, want in outs:  # replays return fresh tensors: later replays overwrite none of them
        assert torch.equal(got, want)
    x = torch.randn(4, 1, 64, generator=g).to(device=device, dtype=dtype).requires_grad_(True)
    assert not graphed.eligible(x)  # an input that needs gradients never goes through a graph
    with torch.no_grad():
        assert graphed.eligible(x) == (device == "cuda")
    cuda = device == "cuda"
    keys = [((2, 1, 64), dtype, x.device, False), ((1, 1, 64), dtype, x.device, False)]
    assert list(graphed.graphs) == (keys if cuda else [])
    assert graphed.failed is None
    graphed.clear()
    assert not graphed.graphs and not graphed.seen


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("device", DEVICES)
def test_graphed_apply_equals_eager_in_generate_and_scoring(device: str, dtype: torch.dtype) -> None:
    """``apply(graphed=True)``: the same tokens and logits in ``generate()`` with the KV cache and the
    same scores as ``apply()``; on CUDA the decode steps' edits are replayed from graphs."""
    from hpr.editor_set import _EditCall

    tok = byte_tokenizer()
    model = _model(device, dtype)
    eds = _editors(model, (0, 2), seed=7)
    enc = tok(["Hello there", "Why is the sky"], return_tensors="pt", padding=True, padding_side="left").to(device)
    kw = dict(max_new_tokens=8, do_sample=False, pad_token_id=tok.pad_token_id, return_dict_in_generate=True)
    with eds.apply(model):
        want = model.generate(**enc, output_logits=True, **kw)
    with eds.apply(model, graphed=True):
        got = model.generate(**enc, output_logits=True, **kw)
    assert torch.equal(got.sequences, want.sequences)
    torch.testing.assert_close(torch.stack(got.logits), torch.stack(want.logits), rtol=1e-5, atol=1e-5)
    kept = {k: dict(g.graphs) for k, g in eds._graphs.items()}
    assert all(kept.values()) == (device == "cuda")
    with eds.apply(model, graphed=True):  # a later block replays the graphs the first one captured
        again = model.generate(**enc, **kw)
    assert torch.equal(again.sequences, want.sequences)
    assert all(eds._graphs[k].graphs.get(s) is g for k, gs in kept.items() for s, g in gs.items())
    reqs = _requests() * 2  # each batch shape recurs: on CUDA the second pass replays graphs
    with eds.apply(model, graphed=True):
        graphed_scores = score(model, tok, reqs, batch_size=3, progress=False)
    eager_scores = score(model, tok, reqs, method=eds, batch_size=3, progress=False)
    assert _maxdiff(graphed_scores, eager_scores) < 1e-5
    assert _maxdiff(eager_scores, score(model, tok, reqs, batch_size=3, progress=False)) > 1e-2
    call = _EditCall(eds.editors[0], graphs=GraphedEdit())
    x = torch.randn(2, 1, model.config.hidden_size, device=device, dtype=dtype)
    for _ in range(3):
        torch.testing.assert_close(call(x), eds.editors[0].edit(x), rtol=0, atol=0)
    assert call.graphs is not None and len(call.graphs.graphs) == (1 if device == "cuda" else 0)


class _CPUGraphs(GraphedEdit):
    """A ``GraphedEdit`` whose "graphs" work on the CPU, so the bookkeeping runs in every test run: a
    capture keeps the edit it was given and a replay reruns that edit on the static input, as a
    CUDA graph replays the kernels and weights it captured."""

    captures = 0
    replays = 0

    def eligible(self, x: Tensor) -> bool:
        return not (x.requires_grad and torch.is_grad_enabled()) and x.numel() // x.shape[-1] <= self.max_rows

    def _capture(self, x: Tensor, edit: Any) -> tuple[Tensor, Tensor, Any]:
        type(self).captures += 1
        static_in = x.clone()
        static_out = edit(static_in)

        class Graph:
            def replay(self) -> None:
                _CPUGraphs.replays += 1
                static_out.copy_(edit(static_in))

        return static_in, static_out, Graph()


def test_graphs_outlive_apply_blocks_until_the_weights_change(monkeypatch: pytest.MonkeyPatch) -> None:
    """``apply(graphed=True)`` keeps each layer's graphs for later blocks (a shape is captured once,
    at its second occurrence over all blocks) and drops them when a weight changes in place, so the
    next block captures the new weights; every block gives the eager edit's logits."""
    monkeypatch.setattr("hpr.editor_set.GraphedEdit", _CPUGraphs)
    monkeypatch.setattr(_CPUGraphs, "captures", 0)
    model = _model("cpu", torch.float32)
    eds = _editors(model, (0, 2), seed=3)
    ids = torch.randint(0, model.config.vocab_size, (4, 2), generator=torch.Generator().manual_seed(4))

    def logits(graphed: bool | None, inference: bool = False) -> Tensor:
        mode = torch.inference_mode() if inference else torch.no_grad()
        with mode, eds.apply(model, graphed=graphed) if graphed is not None else nullcontext():
            return model(ids).logits.clone()

    plain, want = logits(None), logits(False)
    assert not torch.equal(plain, want)
    for _ in range(3):
        torch.testing.assert_close(logits(True, inference=True), want, rtol=0, atol=0)
    assert _CPUGraphs.captures == 2  # one per edited layer
    for _ in range(3):  # inference mode's graphs are its own (its tensors cannot be updated outside it)
        torch.testing.assert_close(logits(True), want, rtol=0, atol=0)
    assert _CPUGraphs.captures == 4
    graphs = eds._graphs[(0, False)]
    shape = (4, 2, model.config.hidden_size)
    assert isinstance(graphs, _CPUGraphs)
    assert list(graphs.graphs) == [(shape, torch.float32, torch.device("cpu"), m) for m in (True, False)]
    with torch.no_grad():
        eds.editors[0].probe.weight.neg_()
    new_want = logits(False)
    assert not torch.equal(new_want, want)
    for _ in range(3):
        torch.testing.assert_close(logits(True), new_want, rtol=0, atol=0)
    assert _CPUGraphs.captures == 5  # layer 0 again, layer 2 kept
    eds.editors[2].use_angle = False  # another variant of the same weights: captured anew
    reflected = logits(False)
    for _ in range(2):
        torch.testing.assert_close(logits(True), reflected, rtol=0, atol=0)
    assert _CPUGraphs.captures == 6
    eds.clear_graphs()
    assert not eds._graphs


def test_graphed_generate_and_scoring_replay_kept_graphs(monkeypatch: pytest.MonkeyPatch) -> None:
    """``generate()`` with the KV cache and the scorer through ``apply(graphed=True)`` with graphs
    that work on the CPU (so this runs everywhere; ``pytest -m gpu`` runs the real ones above):
    the same tokens, logits and scores as the eager edit, decode steps replayed, a second
    ``generate()`` replaying the first one's graphs, and past ``max_graphs`` shapes the least
    recently used dropped."""
    monkeypatch.setattr("hpr.editor_set.GraphedEdit", _CPUGraphs)
    monkeypatch.setattr(_CPUGraphs, "captures", 0)
    monkeypatch.setattr(_CPUGraphs, "replays", 0)
    tok = byte_tokenizer()
    model = _model("cpu", torch.float32)
    eds = _editors(model, (0, 2), seed=7)
    enc = tok(["Hello there", "Why is the sky"], return_tensors="pt", padding=True, padding_side="left")
    kw = dict(max_new_tokens=8, do_sample=False, pad_token_id=tok.pad_token_id, return_dict_in_generate=True)
    with eds.apply(model):
        want = model.generate(**enc, output_logits=True, **kw)
    for n in range(2):
        with eds.apply(model, graphed=True):
            got = model.generate(**enc, output_logits=True, **kw)
        assert torch.equal(got.sequences, want.sequences)
        torch.testing.assert_close(torch.stack(got.logits), torch.stack(want.logits), rtol=0, atol=0)
        if n == 0:  # 7 decode steps of one shape per layer: eager, captured and replayed, replayed x 5
            assert (_CPUGraphs.captures, _CPUGraphs.replays) == (2, 2 * 6)
    assert _CPUGraphs.captures == 4  # the second call captures only the prefill shape, seen twice now
    assert _CPUGraphs.replays == 2 * 6 + 2 * (1 + 7)
    reqs = _requests() * 2
    eager_scores = score(model, tok, reqs, method=eds, batch_size=3, progress=False)
    with eds.apply(model, graphed=True):
        graphed_scores = score(model, tok, reqs, batch_size=3, progress=False)
    assert _maxdiff(graphed_scores, eager_scores) < 1e-5
    assert all(len(g.graphs) <= g.max_graphs for g in eds._graphs.values())
    one_off = _CPUGraphs(lambda x: x)
    for n in range(1, 2000):  # shapes seen once are counted, up to a bound
        one_off(torch.zeros(1, n % 250 + 1, n // 250 + 1))
    assert 0 < len(one_off.seen) <= MAX_SEEN and not one_off.graphs

"""Native prefix-sharing scorer vs plain full-sequence scoring on the tiny random model."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from hpr.data.records import Record
from hpr.editor import HPR
from hpr.editor_set import EditorSet
from hpr.errors import DataError, ParameterError
from hpr.evaluation import tasks
from hpr.evaluation.scoring import Request, encode_pair, ensure_bos, score, score_full, tok_encode
from hpr.lm.architectures import fingerprint
from hpr.lm.kv import common_prefix, count_tokens
from hpr.lm.tiny import byte_tokenizer

PRIMER = "Q: A shared primer, the same for every question.\nA: Yes, it is the same one.\n\n" * 2


def _requests(n: int = 6) -> list[Request]:
    out = []
    for i in range(n):
        ctx = f"{PRIMER}\n\nQ: question number {i}{'?' * i}\nA:"
        conts = (" yes", " no, never" + "!" * i, " m", " it depends on the day")
        out.append(Request(f"r{i}", ctx, conts))
    return out


def _editors(model: torch.nn.Module, layers: tuple[int, ...] = (1, 2)) -> EditorSet:
    torch.manual_seed(1)
    eds = {i: HPR(64, angle_layers=2) for i in layers}
    return EditorSet(eds, fingerprint(model))


def _maxdiff(a: list[list[float]], b: list[list[float]]) -> float:
    return max(abs(x - y) for ra, rb in zip(a, b, strict=True) for x, y in zip(ra, rb, strict=True))


def test_native_equals_full_base(tiny_model, tokenizer) -> None:
    reqs = _requests()
    native = score(tiny_model, tokenizer, reqs, batch_size=3, progress=False)
    full = score_full(tiny_model, tokenizer, reqs)
    assert _maxdiff(native, full) < 1e-5


def test_native_equals_full_with_editors(tiny_model, tokenizer) -> None:
    reqs = _requests()
    eds = _editors(tiny_model)
    native = score(tiny_model, tokenizer, reqs, method=eds, batch_size=2, progress=False)
    full = score_full(tiny_model, tokenizer, reqs, method=eds)
    base = score_full(tiny_model, tokenizer, reqs)
    assert _maxdiff(native, full) < 1e-5
    assert _maxdiff(full, base) > 1e-3  # the editors do change the scores
    # the hooks are gone afterwards
    assert _maxdiff(score(tiny_model, tokenizer, reqs, progress=False), base) < 1e-5


def test_batch_size_does_not_change_scores(tiny_model, tokenizer) -> None:
    reqs = _requests(5)
    a = score(tiny_model, tokenizer, reqs, batch_size=1, progress=False)
    b = score(tiny_model, tokenizer, reqs, batch_size=16, progress=False)
    assert _maxdiff(a, b) < 1e-5


def _mixed_requests() -> list[Request]:
    """Contexts of different lengths; continuations of one token only (ToxiGen-like), of many,
    and mixed, so packed rows differ in width and some rows hold no continuation pass at all."""
    out = []
    for i in range(9):
        ctx = f"{PRIMER}\n\nQ: {'why ' * (i % 4)}question {i}\nA:"
        if i % 3 == 0:
            conts: tuple[str, ...] = (" a", " b")  # one byte token each: no continuation pass
        elif i % 3 == 1:
            conts = (" a", " not at all" + "!" * i, " yes, " * (i % 5 + 1))
        else:
            conts = (" the very long answer number " + str(i) * i, " q")
        out.append(Request(f"m{i}", ctx, conts))
    return out


@pytest.mark.parametrize("max_tokens", [1, 40, 200, None])
def test_packed_passes_equal_full_sequences(tiny_model, tokenizer, max_tokens) -> None:
    """Packing a pass's continuations into one row per question (block mask, positions that
    continue each context) gives every continuation the log-likelihood of its own full sequence,
    for every pass size, with and without edits (``max_tokens=1``: one question per pass)."""
    reqs = _mixed_requests()
    eds = _editors(tiny_model)
    for method in (None, eds):
        packed = score(tiny_model, tokenizer, reqs, method=method, batch_size=4, max_tokens=max_tokens, progress=False)
        assert _maxdiff(packed, score_full(tiny_model, tokenizer, reqs, method=method)) < 1e-5


def test_packed_pass_count(tiny_model, tokenizer) -> None:
    """One context pass and at most one continuation pass per group of questions."""
    reqs = _mixed_requests()
    with count_tokens(tiny_model) as c:
        score(tiny_model, tokenizer, reqs, batch_size=16, max_tokens=10_000, progress=False)
    assert c.calls == 3  # shared prefix, contexts, packed continuations
    with pytest.raises(ParameterError, match="max_tokens"):
        score(tiny_model, tokenizer, reqs, max_tokens=0, progress=False)


def test_fewer_tokens_than_full(tiny_model, tokenizer) -> None:
    reqs = _requests()
    with count_tokens(tiny_model) as native:
        score(tiny_model, tokenizer, reqs, progress=False)
    with count_tokens(tiny_model) as full:
        score_full(tiny_model, tokenizer, reqs)
    assert 0 < native.tokens < full.tokens / 3


def test_single_request_and_one_token_choices(tiny_model, tokenizer) -> None:
    reqs = [Request("a", "Is it? ", ("Y", "N"))]  # trailing space moves to the continuation
    assert _maxdiff(score(tiny_model, tokenizer, reqs, progress=False), score_full(tiny_model, tokenizer, reqs)) < 1e-5


def test_truthfulqa_requests(tiny_model, tokenizer) -> None:
    tiny_model.config.max_position_embeddings = 4096
    recs = [Record(f"q{i}", f"Why {i}?", ("Because.", "No reason at all."), (0,), best=0, mc1=(0, 1)) for i in range(3)]
    reqs = [tasks.request("truthfulqa", r) for r in recs]
    assert reqs[0].context.startswith("Q: What is human life expectancy")
    assert reqs[0].continuations == (" Because.", " No reason at all.")
    native = score(tiny_model, tokenizer, reqs, progress=False)
    assert np.allclose(native, score_full(tiny_model, tokenizer, reqs), atol=1e-4)


def test_encode_pair_moves_trailing_space(tokenizer) -> None:
    ctx, cont = encode_pair(tokenizer, "Q: a\nA: ", "b")
    assert tokenizer.decode(ctx) == "Q: a\nA:"
    assert tokenizer.decode(cont) == " b"


def _bos_tokenizer():
    """The byte tokenizer, configured to add ``<bos>`` in front by default (as Llama's do)."""
    from tokenizers import processors

    tok = byte_tokenizer()
    tok.backend_tokenizer.post_processor = processors.TemplateProcessing(
        single="<bos> $A", special_tokens=[("<bos>", tok.bos_token_id)]
    )
    return tok


@pytest.mark.parametrize("adds_bos", [False, True])
def test_add_bos(adds_bos: bool) -> None:
    """None: the tokenizer's default; False: no BOS; True: exactly one BOS at the start."""
    tok = _bos_tokenizer() if adds_bos else byte_tokenizer()
    bos = tok.bos_token_id
    plain = list(tok.encode("Q: hi", add_special_tokens=False))
    assert tok_encode(tok, "Q: hi") == ([bos] if adds_bos else []) + plain
    assert tok_encode(tok, "Q: hi", add_bos=False) == plain
    assert tok_encode(tok, "Q: hi", add_bos=True) == [bos] + plain
    assert tok_encode(tok, "<bos>Q: hi", add_bos=True) == [bos] + plain  # BOS text: still one
    for add_bos in (None, False, True):
        ctx, cont = encode_pair(tok, "Q: hi\nA:", " yes", add_bos)
        assert (ctx[0] == bos) == (add_bos is True or (add_bos is None and adds_bos))
        assert tok.decode(cont) == " yes"


def test_add_bos_changes_scores_and_prefix_sharing_stays_exact(tiny_model) -> None:
    tok = _bos_tokenizer()
    reqs = _requests(3)
    runs = {b: score(tiny_model, tok, reqs, progress=False, add_bos=b) for b in (None, False, True)}
    assert _maxdiff(runs[None], runs[True]) < 1e-6  # this tokenizer adds BOS by default
    assert _maxdiff(runs[False], runs[True]) > 1e-3
    for b in (False, True):
        assert _maxdiff(runs[b], score_full(tiny_model, tok, reqs, add_bos=b)) < 1e-5


def test_ensure_bos_needs_a_bos_token() -> None:
    tok = byte_tokenizer()
    assert ensure_bos(tok, [tok.bos_token_id, 5]) == [tok.bos_token_id, 5]
    tok.bos_token = None
    with pytest.raises(ParameterError, match="no BOS"):
        ensure_bos(tok, [5])


def test_common_prefix() -> None:
    assert common_prefix([[1, 2, 3, 4], [1, 2, 5]]) == 2
    assert common_prefix([[1, 2, 3]]) == 2  # each context keeps at least one token
    assert common_prefix([[1, 2], [1, 2, 3]]) == 1
    assert common_prefix([[7], [8]]) == 0


def test_bad_input(tiny_model, tokenizer) -> None:
    with pytest.raises(DataError):
        score(tiny_model, tokenizer, [Request("x", "ctx", ())], progress=False)
    with pytest.raises(DataError):
        score(tiny_model, tokenizer, [Request("x", "", (" a",))], progress=False)
    with pytest.raises(ParameterError):
        score(tiny_model, tokenizer, _requests(1), batch_size=0, progress=False)
    assert score(tiny_model, tokenizer, [], progress=False) == []


def _tiny_gemma3(sliding_window: int) -> torch.nn.Module:
    """A tiny random Gemma-3 text model: sliding-window and global layers, like Gemma-3-270M."""
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig

    cfg = Gemma3TextConfig(
        vocab_size=300,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=16,
        sliding_window=sliding_window,
        max_position_embeddings=1024,
        layer_types=["sliding_attention", "sliding_attention", "sliding_attention", "full_attention"],
    )
    torch.manual_seed(0)
    return Gemma3ForCausalLM(cfg).eval()


@pytest.mark.parametrize("window", [512, 16])
def test_native_equals_full_on_sliding_window_model(tokenizer, window: int) -> None:
    """Gemma-3-like layers: prefix sharing when every sequence fits the window (512), the exact
    full-sequence fallback when one does not (16); both equal full scoring, edited too."""
    from hpr.lm.kv import sliding_window

    model = _tiny_gemma3(window)
    assert sliding_window(model) == window
    reqs = _requests(4)
    eds = _editors(model, (0, 3))
    for method in (None, eds):
        native = score(model, tokenizer, reqs, method=method, batch_size=2, progress=False)
        full = score_full(model, tokenizer, reqs, method=method)
        assert _maxdiff(native, full) < 1e-4

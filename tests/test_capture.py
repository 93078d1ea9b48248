"""Prompt formats and activation capture on the tiny random Llama."""

from __future__ import annotations

import pytest
import torch

from hpr.data.prompts import choice_order, encode, format_record, get_format, letters, mc_letter, qa
from hpr.data.records import Record
from hpr.errors import DataError, ParameterError
from hpr.lm import capture as capture_mod
from hpr.lm.architectures import decoder_layers
from hpr.lm.capture import Captured, capture, run_capture

RECORDS = [
    Record("q0", "Is the sky blue?", ("Yes it is", "No", "Yes it is green"), (0,)),
    Record("q1", "What is 2+2?", ("4", "5", "four", "Five"), (0, 2)),
    Record("q2", "Who wrote Hamlet?", ("Shakespeare", "Marlowe"), (0,)),
]
CHAT = (
    "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}<eos>{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)


def test_letters_and_mc_letter_format() -> None:
    assert letters(3) == ["A", "B", "C"]
    assert letters(28)[-3:] == ["Z", "AA", "AB"]
    rec = RECORDS[1]
    order = choice_order(rec, 0)
    assert sorted(order) == [0, 1, 2, 3]
    assert order == choice_order(rec, 0)  # stable
    prompts = set()
    for i in range(len(rec.choices)):
        prompt, answer = mc_letter(rec, i, 0)
        prompts.add(prompt)
        lines = prompt.split("\n")
        assert lines[0] == rec.prompt and lines[-1] == "Answer:"
        letter = answer.split(". ")[0]
        assert f"{letter}. {rec.choices[i]}" in lines and answer == f"{letter}. {rec.choices[i]}"
        assert lines[1 + order.index(i)] == answer
    assert len(prompts) == 1  # every answer of a question sees the same prompt
    orders = {tuple(choice_order(rec, s)) for s in range(20)}
    assert len(orders) > 1  # the order depends on the seed


def test_qa_format_and_registry() -> None:
    assert qa(RECORDS[0], 1) == ("Q: Is the sky blue?\nA:", "No")
    assert get_format("qa") is qa
    with pytest.raises(ParameterError, match="unknown prompt format"):
        get_format("nope")
    rows = format_record(RECORDS[1], "qa")
    assert [(c, ok) for c, ok, _, _ in rows] == [(0, True), (1, False), (2, True), (3, False)]


def test_encode_plain_and_chat(tokenizer) -> None:
    enc = encode(tokenizer, "Q: x\nA:", "yes")
    assert tokenizer.decode(list(enc.answer_ids)) == " yes"
    assert tokenizer.decode(list(enc.prompt_ids)) == "Q: x\nA:"
    tokenizer.chat_template = CHAT
    enc = encode(tokenizer, "Q: x", "yes")
    assert tokenizer.decode(list(enc.prompt_ids)) == "<|user|>Q: x<eos><|assistant|>"
    assert tokenizer.decode(list(enc.answer_ids)) == "yes"
    plain = encode(tokenizer, "Q: x", "yes", chat=False)
    assert tokenizer.decode(list(plain.prompt_ids)) == "Q: x"


def test_capture_layout_and_values(tiny_model, tokenizer) -> None:
    cap = run_capture(
        tiny_model, tokenizer, RECORDS, prompt_format="qa", progress=False, batch_size=4, share_prompt=False
    )
    n_seq = sum(len(r.choices) for r in RECORDS)
    assert cap.layers == [0, 1, 2, 3]
    assert cap.data.shape[:2] == (4, cap.num_tokens) and cap.hidden_size == 64
    assert cap.data.dtype == torch.float32
    assert int(cap.sequence.max()) + 1 == n_seq
    assert bool((torch.diff(cap.sequence) >= 0).all())
    # One sequence by hand: hidden_states[l + 1] is the output of block l (l < last).
    s = 3  # q1 choice 0 ("4", correct): q0 has sequences 0..2
    rows = torch.nonzero(cap.sequence == s).squeeze(-1)
    assert cap.label[rows].tolist() == [1] * len(rows) and set(cap.question[rows].tolist()) == {1}
    enc = encode(tokenizer, *qa(RECORDS[1], 0))
    assert cap.token[rows].tolist() == list(enc.answer_ids)
    assert cap.position[rows].tolist() == list(range(len(enc.answer_ids)))
    with torch.no_grad():
        hs = tiny_model(torch.tensor([enc.ids]), output_hidden_states=True).hidden_states
    for layer in (0, 2):
        want = hs[layer + 1][0, -len(enc.answer_ids) :]
        torch.testing.assert_close(cap.acts[layer][rows], want, rtol=1e-5, atol=1e-5)
    single = run_capture(
        tiny_model, tokenizer, RECORDS, prompt_format="qa", progress=False, batch_size=1, share_prompt=False
    )
    torch.testing.assert_close(single.data, cap.data, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("share", [True, False])
def test_one_forward_per_unique_sequence(tiny_model, tokenizer, share) -> None:
    calls: list[tuple[int, int]] = []
    hook = decoder_layers(tiny_model)[0].register_forward_pre_hook(lambda m, a: calls.append(tuple(a[0].shape[:2])))
    try:
        cap = run_capture(tiny_model, tokenizer, RECORDS, layers=[1], progress=False, batch_size=4, share_prompt=share)
    finally:
        hook.remove()
    if share:  # the three prompts in one batch, then every answer in one packed pass (a row per question)
        assert [b for b, _ in calls] == [3, 3]
        per_question = torch.bincount(cap.question)  # answer tokens of each question's T + F answers
        assert calls[1][1] == int(per_question.max())  # side by side in one row, not T x F
    else:
        assert [b for b, _ in calls] == [4, 4, 1]


def test_packed_groups_follow_batch_size(tiny_model, tokenizer) -> None:
    """``batch_size=1``: one question per group, its prompt pass then its packed answers; the values
    equal the one-group run (packing changes only float rounding)."""
    calls: list[int] = []
    hook = decoder_layers(tiny_model)[0].register_forward_pre_hook(lambda m, a: calls.append(a[0].shape[0]))
    try:
        one = run_capture(tiny_model, tokenizer, RECORDS, layers=[1, 2], progress=False, batch_size=1)
    finally:
        hook.remove()
    assert calls == [1, 1, 1, 1, 1, 1]
    many = run_capture(tiny_model, tokenizer, RECORDS, layers=[1, 2], progress=False, batch_size=16)
    torch.testing.assert_close(one.data, many.data, rtol=1e-5, atol=1e-5)


def test_shared_prompt_matches_whole_sequences(tiny_model, tokenizer) -> None:
    for fmt in ("mc-letter", "qa"):
        a = run_capture(tiny_model, tokenizer, RECORDS, prompt_format=fmt, progress=False)
        b = run_capture(tiny_model, tokenizer, RECORDS, prompt_format=fmt, progress=False, share_prompt=False)
        assert a.meta["shared_prompt"] and not b.meta["shared_prompt"]
        torch.testing.assert_close(a.data, b.data, rtol=1e-5, atol=1e-5)
        assert torch.equal(a.token, b.token) and torch.equal(a.sequence, b.sequence)


def test_pairs_skip_shared_prefix(tiny_model, tokenizer) -> None:
    cap = run_capture(tiny_model, tokenizer, RECORDS, prompt_format="qa", progress=False)
    neg, pos, same = cap.candidate_pairs()
    # q0: 2 negatives x 1 positive; q1: 2 x 2; q2: 1 x 1 -> 7 answer pairs.
    pairs_seen = {(int(cap.sequence[n]), int(cap.sequence[p])) for n, p in zip(neg, pos, strict=True)}
    assert len(pairs_seen) == 7
    assert bool((cap.question[neg] == cap.question[pos]).all())
    assert bool((cap.label[neg] == 0).all() and (cap.label[pos] == 1).all())
    assert bool((cap.position[neg] == cap.position[pos]).all())
    kn, kp = cap.pairs()
    # The kept positions are exactly those whose answer tokens differ somewhere up to them.
    assert len(kn) == int((~same).sum())
    assert len(kn) < len(neg)
    # " Yes it is" vs " Yes it is green": the 10 shared tokens are dropped, nothing else of that pair.
    s_true = int(cap.sequence[(cap.question == 0) & (cap.label == 1)][0])
    s_green = s_true + 2
    both = (cap.sequence[kn] == s_green) & (cap.sequence[kp] == s_true)
    assert int(both.sum()) == 0
    per_layer = cap.pairs(layer=3)
    assert torch.equal(per_layer[0], kn)
    strict = cap.pairs(threshold=1.0)
    assert len(strict[0]) >= len(kn)


def test_pairs_with_mc_letter_keep_all_but_leading_space(tiny_model, tokenizer) -> None:
    cap = run_capture(tiny_model, tokenizer, RECORDS, progress=False)
    neg, pos, _ = cap.candidate_pairs()
    kn, _ = cap.pairs()
    # Plain-text answers start with " X." : only the shared leading space token is dropped.
    assert len(neg) - len(kn) == 7


def test_cache_reuse_and_keys(tiny_model, tokenizer, tmp_path, monkeypatch) -> None:
    kw = dict(dataset="tiny", split="train", prompt_format="qa", progress=False, cache_root=tmp_path)
    first = capture(tiny_model, tokenizer, RECORDS, **kw)
    files = list(tmp_path.glob("*.safetensors"))
    assert len(files) == 1 and files[0].name.startswith("tiny-train-")

    def boom(*a, **k):
        raise AssertionError("the model should not run again")

    monkeypatch.setattr(capture_mod, "run_capture", boom)
    again = capture(tiny_model, tokenizer, RECORDS, **kw)
    assert torch.equal(again.data, first.data) and again.layers == first.layers
    assert torch.equal(again.token, first.token) and again.meta["key"] == first.meta["key"]
    assert again.meta["model"]["hidden_size"] == 64 and again.meta["prompt_format"] == "qa"
    monkeypatch.undo()
    other = capture(tiny_model, tokenizer, RECORDS[:2], **kw)  # other data -> other key
    assert other.meta["key"] != first.meta["key"]
    fmt = capture(tiny_model, tokenizer, RECORDS, **{**kw, "prompt_format": "mc-letter"})
    assert fmt.meta["key"] != first.meta["key"]
    assert len(list(tmp_path.glob("*.safetensors"))) == 3
    files[0].write_bytes(b"broken")  # a damaged cache file is recomputed
    fixed = capture(tiny_model, tokenizer, RECORDS, **kw)
    assert torch.equal(fixed.data, first.data)


def test_half_precision_model_stores_its_dtype(tiny_model, tokenizer, tmp_path) -> None:
    model = tiny_model.to(torch.bfloat16)
    cap = capture(model, tokenizer, RECORDS[:1], layers=[1, 3], progress=False, cache_root=tmp_path)
    assert cap.data.dtype == torch.bfloat16 and cap.layers == [1, 3]
    back = Captured.load(next(tmp_path.glob("*.safetensors")))
    assert back.data.dtype == torch.bfloat16 and torch.equal(back.data, cap.data)
    sub = cap.subset_layers([3])
    assert torch.equal(sub.acts[3], cap.acts[3])


def test_bad_inputs(tiny_model, tokenizer, tmp_path) -> None:
    with pytest.raises(DataError, match="no records"):
        run_capture(tiny_model, tokenizer, [], progress=False)
    with pytest.raises(DataError, match="at least one correct and one incorrect"):
        run_capture(tiny_model, tokenizer, [Record("x", "q", ("a", "b"), (0, 1))], progress=False)
    with pytest.raises(ParameterError, match="not valid for a model with 4 blocks"):
        run_capture(tiny_model, tokenizer, RECORDS, layers=[4], progress=False)
    with pytest.raises(ParameterError, match="batch_size"):
        run_capture(tiny_model, tokenizer, RECORDS, batch_size=0, progress=False)
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"nope")
    with pytest.raises(DataError, match="not a readable activation file"):
        Captured.load(bad)
    cap = run_capture(tiny_model, tokenizer, RECORDS[:1], layers=[0], progress=False)
    with pytest.raises(ParameterError, match="was not captured"):
        cap.layer_index(2)


@pytest.mark.slow
def test_smollm2_capture_shared_prompt_matches_whole_sequences() -> None:
    from hpr.errors import ModelError
    from hpr.lm.models import load_model
    from hpr.train import train

    try:
        model, tok = load_model("smollm2-135m-instruct")
    except ModelError as exc:
        pytest.skip(f"embedded SmolLM2 unavailable: {exc}")
    a = run_capture(model, tok, RECORDS, layers=[0, 14, 29], progress=False)
    b = run_capture(model, tok, RECORDS, layers=[0, 14, 29], progress=False, share_prompt=False)
    assert a.hidden_size == 576 and a.layers == [0, 14, 29] and a.data.dtype == torch.float32
    scale = float(b.data.abs().max())
    torch.testing.assert_close(a.data, b.data, rtol=1e-4, atol=1e-5 * scale)
    # Chat template: the answer part is "X. text" without the end-of-turn tokens.
    first = tok.decode(a.token[a.sequence == 0].tolist())
    assert first.endswith(RECORDS[0].choices[0]) and first[1:3] == ". "
    neg, _ = a.pairs()
    assert len(neg) == len(a.candidate_pairs()[0])  # lettered answers share no prefix
    es = train(a, None, epochs=1, k=2, progress=False)
    assert len(es.selected) == 2 and es.model["hidden_size"] == 576


def test_common_prompt_prefix_runs_once(tiny_model, tokenizer) -> None:
    """Prompts that share their first tokens (a chat template's system turn, an instruction): the
    prefix runs once (batch 1), the rest continues from its KV cache; the activations equal
    whole-sequence runs."""
    recs = [Record(r.id, "Answer truthfully, please. " + r.prompt, r.choices, r.correct) for r in RECORDS]
    calls: list[tuple[int, int]] = []
    hook = decoder_layers(tiny_model)[0].register_forward_pre_hook(lambda m, a: calls.append(tuple(a[0].shape[:2])))
    try:
        a = run_capture(tiny_model, tokenizer, recs, layers=[0, 2], progress=False)
    finally:
        hook.remove()
    assert [b for b, _ in calls] == [1, 3, 3] and calls[0][1] >= len("Answer truthfully, please. ")
    b = run_capture(tiny_model, tokenizer, recs, layers=[0, 2], progress=False, share_prompt=False)
    torch.testing.assert_close(a.data, b.data, rtol=1e-5, atol=1e-5)

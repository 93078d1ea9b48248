"""LoRA fine-tuning baseline (``peft``), applied by injecting the adapter and removed on exit.

Training data: the training questions with each correct answer (``answers="correct"``, the
positives HPR trains on) or only the best answer (``answers="best"``), supervised with the
causal-LM loss on the answer tokens only (prompt and padding masked with -100). The format is
``hpr.data.prompts``' ``"qa"`` in plain text by default (``"Q: <question>\nA:"`` + ``" <answer>"``,
no chat template): LoRA changes the language model itself, so it is trained on the format the
model is scored in (lm-eval's TruthfulQA prompt), not HPR's lettered-choices capture format,
which would teach it to answer with letters.

Defaults: rank 8, ``lora_alpha`` 16, dropout 0.05 on peft's default target modules for the
architecture (``q_proj``/``v_proj`` for Llama, Gemma, Qwen), AdamW lr 2e-4 with cosine decay
and 5% warmup, batch 8, 1 epoch, capped at ``max_steps`` (default 60) optimiser steps. The cap is
the compute budget: TruthfulQA's train split (403 correct answers, 51 steps) stays within
~10 minutes for SmolLM2-135M on 2 CPU cores (``fit_seconds`` in the saved config); raise it on a
GPU.

Saved as peft's adapter files (``adapter_config.json``, ``adapter_model.safetensors``, loadable
with ``peft.PeftModel.from_pretrained``) plus our ``config.json`` with the model fingerprint.
``apply`` wraps the model in a ``PeftModel``, loads the weights, and on exit ``unload()``s it
(the original modules are put back, weights untouched) and restores every parameter's
``requires_grad`` flag and the train/eval mode, so outputs afterwards are bit-identical.
"""

from __future__ import annotations

import json
import math
import time
import warnings
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from torch import Tensor, nn
from tqdm.auto import tqdm

from hpr import _files
from hpr._extras import require
from hpr.data.records import Record
from hpr.errors import EditorError, ModelError, ParameterError
from hpr.lm.architectures import fingerprint
from hpr.lm.placement import model_device
from hpr.methods.base import METHOD_FORMAT, check_fingerprint, read_method_config

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"


def lora_config(
    model: nn.Module, r: int = 8, alpha: int = 16, dropout: float = 0.05, target_modules: Sequence[str] | None = None
) -> Any:
    """A ``peft.LoraConfig`` for ``model`` (peft's default target modules for its architecture)."""
    require("peft", "baselines", "the LoRA baseline")
    from peft import LoraConfig
    from peft.utils import TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING as DEFAULTS

    if target_modules is None:
        mt = str(getattr(model.config, "model_type", None))
        if mt not in DEFAULTS:
            raise ModelError(f"peft has no default LoRA target modules for {mt!r}; pass target_modules=[...]")
        target_modules = DEFAULTS[mt]
    if r < 1:
        raise ParameterError(f"LoRA rank r must be >= 1, got {r}")
    return LoraConfig(
        r=r,
        lora_alpha=alpha,
        lora_dropout=dropout,
        target_modules=list(target_modules),
        task_type="CAUSAL_LM",
        bias="none",
    )


def _config_dict(cfg: Any) -> dict[str, Any]:
    """``LoraConfig`` as JSON-ready data (sets become sorted lists), like peft's own writer."""
    out = {}
    for k, v in cfg.to_dict().items():
        if isinstance(v, set):
            v = sorted(v)
        out[k] = v.value if hasattr(v, "value") else v
    return out


@contextmanager
def _peft_wrapped(model: nn.Module, cfg: Any) -> Iterator[Any]:
    """Inject a LoRA adapter into ``model``; on exit remove it and restore flags and mode."""
    require("peft", "baselines", "the LoRA baseline")
    from peft import PeftModel

    flags = {n: p.requires_grad for n, p in model.named_parameters()}
    training = model.training
    with warnings.catch_warnings():  # peft calls a deprecated transformers accessor
        warnings.simplefilter("ignore", FutureWarning)
        pm = PeftModel(model, cfg)
    try:
        yield pm
    finally:
        pm.unload()
        for n, p in model.named_parameters():
            p.requires_grad_(flags.get(n, p.requires_grad))
        model.train(training)


class LoRA:
    """A trained LoRA adapter: peft config (``adapter_config``) and weights (``state``)."""

    name = "lora"

    def __init__(
        self,
        adapter_config: Mapping[str, Any],
        state: Mapping[str, Tensor],
        model: Mapping[str, Any],
        config: Mapping[str, Any] | None = None,
    ) -> None:
        if not state:
            raise EditorError("a LoRA adapter needs weights; fit LoRA again")
        self.adapter_config = dict(adapter_config)
        self.state = {k: v.detach().cpu() for k, v in state.items()}
        self.model = dict(model)
        self.config = dict(config or {})

    def peft_config(self) -> Any:
        from peft import LoraConfig

        keep = {k: v for k, v in self.adapter_config.items() if k in LoraConfig.__dataclass_fields__}
        return LoraConfig(**keep)

    def check_model(self, model: nn.Module) -> None:
        check_fingerprint(self.model, model, "lora")

    @contextmanager
    def apply(self, model: nn.Module, check: bool = True) -> Iterator[nn.Module]:
        """Load the adapter onto ``model`` (in place) inside the block; removed on exit."""
        from peft import set_peft_model_state_dict

        if check:
            self.check_model(model)
        with _peft_wrapped(model, self.peft_config()) as pm:
            result = set_peft_model_state_dict(pm, self.state)
            unexpected = getattr(result, "unexpected_keys", [])
            if unexpected:
                raise EditorError(f"LoRA weights do not fit this model (unexpected {unexpected[:3]})")
            pm.eval()
            model.eval()
            yield model

    def save(self, directory: str | Path) -> Path:
        out = Path(directory)
        _files.save_tensors(out / ADAPTER_WEIGHTS, self.state, {"format": "pt"})
        _files.write_json(out / ADAPTER_CONFIG, self.adapter_config)
        cfg = {
            **{k: v for k, v in self.config.items() if k != "model"},
            "format": METHOD_FORMAT,
            "method": "lora",
            "model": self.model,
        }
        _files.write_json(out / "config.json", cfg)
        return out

    @classmethod
    def load(cls, directory: str | Path, model: nn.Module | None = None) -> LoRA:
        cfg = read_method_config(directory, "lora")
        d = Path(directory)
        try:
            adapter = json.loads((d / ADAPTER_CONFIG).read_text(encoding="utf-8"))
            state = load_file(str(d / ADAPTER_WEIGHTS))
        except (SafetensorError, OSError, ValueError) as exc:
            raise EditorError(
                f"the LoRA adapter files in {d} are missing or unreadable ({exc}); fit LoRA again"
            ) from exc
        out = cls(adapter, state, cfg["model"], cfg)
        if model is not None:
            out.check_model(model)
        return out


DEFAULT_PROMPT_FORMAT = "qa"


def sft_examples(
    records: Sequence[Record],
    tokenizer: Any,
    answers: str = "correct",
    prompt_format: str = DEFAULT_PROMPT_FORMAT,
    seed: int = 0,
    chat: bool | None = False,
) -> list[tuple[list[int], int]]:
    """``(token ids, prompt length)`` of every supervised (prompt, positive answer) sequence."""
    from hpr.data.prompts import encode, format_record

    if answers not in ("correct", "best"):
        raise ParameterError(f"answers must be 'correct' or 'best', got {answers!r}")
    out = []
    for r in records:
        keep = set(r.correct) if answers == "correct" or r.best is None else {r.best}
        for choice, ok, prompt, answer in format_record(r, prompt_format, seed):
            if ok and choice in keep:
                enc = encode(tokenizer, prompt, answer, chat)
                out.append((list(enc.ids), len(enc.prompt_ids)))
    if not out:
        raise ParameterError("no positive answers in the training records to fine-tune LoRA on")
    return out


def _collate(batch: Sequence[tuple[list[int], int]], pad: int, device: torch.device) -> dict[str, Tensor]:
    width = max(len(ids) for ids, _ in batch)
    ids = torch.full((len(batch), width), pad, dtype=torch.long)
    mask = torch.zeros_like(ids)
    labels = torch.full_like(ids, -100)
    for i, (toks, plen) in enumerate(batch):
        ids[i, : len(toks)] = torch.tensor(toks)
        mask[i, : len(toks)] = 1
        labels[i, plen : len(toks)] = torch.tensor(toks[plen:])
    return {"input_ids": ids.to(device), "attention_mask": mask.to(device), "labels": labels.to(device)}


def fit_lora(
    *,
    model: nn.Module,
    tokenizer: Any,
    train: Sequence[Record],
    val: Sequence[Record],
    seed: int = 0,
    dataset: str = "truthfulqa",
    r: int = 8,
    lora_alpha: int = 16,
    dropout: float = 0.05,
    target_modules: Sequence[str] | None = None,
    lr: float = 2e-4,
    batch_size: int = 8,
    epochs: int = 1,
    max_steps: int | None = 60,
    answers: str = "correct",
    prompt_format: str = DEFAULT_PROMPT_FORMAT,
    chat: bool | None = False,
    progress: bool = True,
) -> LoRA:
    """Fine-tune a LoRA adapter on the positive answers of ``train``; ``model`` is left unchanged.

    Reports the mean answer-token loss on ``val`` before and after training in ``config``.
    """
    from peft import get_peft_model_state_dict

    from hpr._nn import lr_schedule

    data = sft_examples(train, tokenizer, answers, prompt_format, seed, chat)
    vdata = sft_examples(val, tokenizer, answers, prompt_format, seed, chat) if val else []
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    device = model_device(model)
    per_epoch = math.ceil(len(data) / batch_size)
    steps = epochs * per_epoch if max_steps is None else min(max_steps, epochs * per_epoch)
    if steps < 1:
        raise ParameterError("LoRA needs at least one training step (check epochs and max_steps)")
    cfg = lora_config(model, r, lora_alpha, dropout, target_modules)
    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed)
    start = time.perf_counter()
    with _peft_wrapped(model, cfg) as pm:
        val_before = _val_loss(pm, vdata, batch_size, pad, device)
        params = [p for p in pm.parameters() if p.requires_grad]
        opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_schedule("cosine", steps, 0.05))
        pm.train()
        losses: list[float] = []
        bar = tqdm(total=steps, desc="LoRA fine-tuning", disable=not progress)
        done = 0
        while done < steps:
            perm = torch.randperm(len(data), generator=g).tolist()
            for s in range(0, len(perm), batch_size):
                if done >= steps:
                    break
                loss = pm(**_collate([data[i] for i in perm[s : s + batch_size]], pad, device)).loss
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
                losses.append(float(loss.detach()))
                done += 1
                bar.update(1)
                bar.set_postfix(loss=f"{losses[-1]:.3f}")
        bar.close()
        pm.eval()
        val_after = _val_loss(pm, vdata, batch_size, pad, device)
        state = {k: v.detach().cpu().clone() for k, v in get_peft_model_state_dict(pm).items()}
    seconds = time.perf_counter() - start
    config = {
        "dataset": dataset,
        "seed": seed,
        "r": r,
        "lora_alpha": lora_alpha,
        "dropout": dropout,
        "lr": lr,
        "batch_size": batch_size,
        "epochs": epochs,
        "max_steps": max_steps,
        "steps": steps,
        "answers": answers,
        "prompt_format": prompt_format,
        "chat": chat,
        "n_train_sequences": len(data),
        "train_loss_first": losses[0],
        "train_loss_last": losses[-1],
        "val_loss_before": val_before,
        "val_loss_after": val_after,
        "fit_seconds": round(seconds, 1),
    }
    return LoRA(_config_dict(cfg), state, fingerprint(model), config)


@torch.no_grad()
def _val_loss(
    pm: Any, data: Sequence[tuple[list[int], int]], batch_size: int, pad: int, device: torch.device
) -> float | None:
    """Mean answer-token loss over ``data`` (token-weighted), or ``None`` without data."""
    if not data:
        return None
    was = pm.training
    pm.eval()
    total, count = 0.0, 0
    for s in range(0, len(data), batch_size):
        batch = _collate(data[s : s + batch_size], pad, device)
        n = int((batch["labels"][:, 1:] != -100).sum())
        total += float(pm(**batch).loss) * n
        count += n
    pm.train(was)
    return total / max(1, count)


__all__ = ["LoRA", "fit_lora", "lora_config", "sft_examples"]

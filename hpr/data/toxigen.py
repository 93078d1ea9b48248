"""ToxiGen's two raw formats: the statement files of the ToxiGen repository (``prompts/{hate,neutral}_<group>_1k.txt``)
and the Hugging Face rows of ``skg/toxigen-data`` (``annotated``), both parsed into ``Item``s with
choices ``No``/``Yes`` and lm-eval's labels."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from hpr.data.sources import Item, Parsed, confined
from hpr.errors import DataError


# ---------------------------------------------------------------- Hugging Face hub rows
def toxigen_label(row: Mapping[str, Any]) -> int:
    """lm-eval's ToxiGen target: 1 (hateful) when ``toxicity_ai + toxicity_human > 5.5``, else 0."""
    try:
        return int(float(row["toxicity_ai"]) + float(row["toxicity_human"]) > 5.5)
    except (KeyError, TypeError, ValueError) as exc:
        raise DataError(
            f"ToxiGen row lacks numeric toxicity_ai/toxicity_human ({exc}); use skg/toxigen-data, config 'annotated'"
        ) from exc


def parse_toxigen_rows(rows: Sequence[Mapping[str, Any]], split: str) -> Parsed:
    """``skg/toxigen-data``/``annotated`` rows (``text``, ``toxicity_ai``, ``toxicity_human``,
    ``target_group``): choices ``No``/``Yes``, labelled as lm-eval does. Keys ``<split>-<row>``."""
    out = Parsed([])
    for i, r in enumerate(rows):
        y = toxigen_label(r)
        out.items.append(
            Item(
                f"{split}-{i}",
                str(r.get("text", "")).strip(),
                ["No", "Yes"],
                [y],
                {
                    "target_group": str(r.get("target_group") or ""),
                    "label": "hate" if y else "neutral",
                    "hub_split": split,
                },
            )
        )
    return out


def parse_toxigen(prompts: Path) -> Parsed:
    """ToxiGen ``prompts/{hate,neutral}_<group>_1k.txt``: statements split on the two characters
    backslash-n, each starting with ``- ``; de-duplicated per (group, label) in file order."""
    files = sorted(p for p in prompts.glob("*_1k.txt") if p.name.startswith(("hate_", "neutral_")))
    if not files:
        raise DataError(f"{prompts} has no hate_<group>_1k.txt / neutral_<group>_1k.txt files")
    out = Parsed([])
    for f in files:
        confined(prompts, f.name)
        label, group = f.name[: -len("_1k.txt")].split("_", 1)
        try:
            text = f.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise DataError(f"cannot read {f} as UTF-8 text ({exc}); restore the original file") from exc
        seen: set[str] = set()
        for line in text.splitlines():
            for part in line.split("\\n"):
                s = part.strip()
                if not s.startswith("- "):
                    continue
                s = s[2:].strip()
                if s and s not in seen:
                    seen.add(s)
                    out.items.append(
                        Item(
                            f"{group}-{label}-{len(seen) - 1}",
                            s,
                            ["No", "Yes"],
                            [1 if label == "hate" else 0],
                            {"target_group": group, "label": label, "file": f.name},
                        )
                    )
    if not out.items:
        raise DataError(f"no statements found in {prompts}: lines must hold '- statement' parts")
    return out

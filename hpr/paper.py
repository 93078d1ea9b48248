"""The paper's published numbers: claims to compare against, NOT results of this package.

Source: Van-Cuong Pham and Thien Huu Nguyen, "Householder Pseudo-Rotation: A Novel Approach to
Activation Editing in LLMs with Direction-Magnitude Perspective", EMNLP 2024 (arXiv:2409.10053).

``PAPER`` maps ``(dataset, method, metric)`` to the published value in percent, for the paper's
models (7B-parameter LLMs), keyed by the paper's model name in ``PAPER_MODEL``. Only values
transcribed from the paper's tables belong here, each with its table; where a value has not been
transcribed, ``paper_value`` answers "not transcribed" instead of a number.
"""

from __future__ import annotations

CITATION = (
    "Pham & Nguyen, Householder Pseudo-Rotation: A Novel Approach to Activation Editing in LLMs "
    "with Direction-Magnitude Perspective, EMNLP 2024 (arXiv:2409.10053)"
)

#: The model the transcribed numbers belong to.
PAPER_MODEL = "Llama-2-7B-chat"

#: (dataset, method, metric) -> (value in percent, table of the paper). Transcribe from the paper
#: only; never put a number here that is not printed in it.
#:
#: Keys use this package's names: dataset in ``hpr.data.DATASETS`` ("truthfulqa", "bbq", "seq",
#: "toxigen"); method in ``hpr.methods.METHOD_NAMES`` plus "iti-15" / "iti-200" (Table 3); metric
#: "mc1", "mc2" (Table 1), "acc" (Table 2), "false_to_true", "true_to_false", "remains_true",
#: "remains_false" (Table 3). Each entry should say its table, e.g. "Table 1".
#:
#: Still empty: no value of Tables 1-3 or Figure 6 has been read from a copy of the paper yet.
#: Copies consulted (only their opening sections, title to introduction, could be read; no table):
#: https://arxiv.org/html/2409.10053v1, https://www.sciencestack.ai/paper/2409.10053,
#: https://deep-paper.org/en/paper/2409.10053. The official code, github.com/VinAIResearch/HPR
#: (README.md), reports no numbers. Fill in from the PDF (https://aclanthology.org/2024.emnlp-main.761,
#: pp. 13737-13751) or the arXiv HTML, reading each value from the page, for PAPER_MODEL only.
PAPER: dict[tuple[str, str, str], tuple[float, str]] = {}

NOT_TRANSCRIBED = "not transcribed"


def paper_value(dataset: str, method: str, metric: str) -> str:
    """The paper's value formatted for a table, or ``NOT_TRANSCRIBED``."""
    hit = PAPER.get((dataset, method, metric))
    if hit is None:
        return NOT_TRANSCRIBED
    value, table = hit
    return f"{value:.1f} ({PAPER_MODEL}, {table})"


__all__ = ["CITATION", "NOT_TRANSCRIBED", "PAPER", "PAPER_MODEL", "paper_value"]

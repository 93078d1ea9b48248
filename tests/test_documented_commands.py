"""Every shell command shown in README.md and book/*.md parses (hpr commands with the real CLI
parser, make targets against the Makefile, scripts must exist); a couple run end to end."""

from __future__ import annotations

import csv
import re
import shlex
import subprocess
from pathlib import Path

import pytest

from hpr.cli import build_parser, main
from hpr.study import profiles

REPO = Path(__file__).resolve().parents[1]
DOCS = [REPO / "README.md", *sorted((REPO / "book").glob("*.md"))]
_FENCE = re.compile(r"^```(bash|sh|shell|console)\s*$(.*?)^```\s*$", re.M | re.S)
_HPR = ("hpr", ".venv/bin/hpr", "$(BIN)/hpr")


def shell_commands(text: str) -> list[list[str]]:
    """The commands of the fenced shell blocks of Markdown ``text``, split like a shell would
    (continuation lines joined, comments and ``$`` prompts dropped)."""
    out: list[list[str]] = []
    for match in _FENCE.finditer(text):
        body = match.group(2).replace("\\\n", " ")
        for line in body.splitlines():
            line = line.strip()
            if match.group(1) == "console":
                if not line.startswith("$ "):
                    continue  # output lines
                line = line[2:]
            words = shlex.split(line, comments=True)
            if words:
                out.append(words)
    return out


def documented() -> list[tuple[str, list[str]]]:
    return [
        (f"{doc.relative_to(REPO)}: {shlex.join(cmd)}", cmd)
        for doc in DOCS
        for cmd in shell_commands(doc.read_text(encoding="utf-8"))
    ]


def make_targets() -> set[str]:
    text = (REPO / "Makefile").read_text(encoding="utf-8")
    return set(re.findall(r"^([A-Za-z][\w.-]*)\s*:(?!=)", text, re.M))


def test_parser_of_fenced_blocks() -> None:
    text = (
        "x\n```bash\nhpr run -p 'a=[1, 2]'  # note\nhpr eval --model m \\\n    --dataset d\n```\n"
        "```console\n$ make test\nsome output\n```\n```python\nhpr = 1\n```\n"
    )
    assert shell_commands(text) == [
        ["hpr", "run", "-p", "a=[1, 2]"],
        ["hpr", "eval", "--model", "m", "--dataset", "d"],
        ["make", "test"],
    ]


def test_docs_show_commands() -> None:
    names = {name.split(":")[0] for name, _ in documented()}
    assert {"README.md", "book/reproduce.md"} <= names
    assert any(cmd[0] in _HPR and cmd[1] == "eval" for _, cmd in documented())


@pytest.mark.parametrize(("name", "cmd"), documented(), ids=[n for n, _ in documented()])
def test_documented_command_parses(name: str, cmd: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    head = cmd[0]
    if head in _HPR:
        try:
            args = build_parser().parse_args(cmd[1:])
        except SystemExit as exc:
            pytest.fail(
                f"{name}: the hpr parser refuses it ({capsys.readouterr().err.strip()})"
                if exc.code
                else f"{name}: exits at parse time"
            )
        if args.command == "run":
            profiles.profile_parameters(args.profile, profiles.parse_overrides(args.param))
    elif head == "make":
        missing = set(cmd[1:]) - make_targets()
        assert not missing, f"{name}: no Makefile target {sorted(missing)}"
    elif head in ("python", "python3", ".venv/bin/python"):
        script = next(w for w in cmd[1:] if not w.startswith("-"))
        assert (REPO / script).is_file() or script == "-m", f"{name}: {script} does not exist"
    elif head in ("export", "cd", "pip", ".venv/bin/pip"):
        pass  # environment set-up, nothing of ours to check
    else:
        pytest.fail(f"{name}: no check for {head!r}; teach tests/test_documented_commands.py about it")


def _documented_run_parameters() -> list[tuple[str, str, object]]:
    out = []
    for name, cmd in documented():
        if cmd[0] in _HPR and cmd[1] == "run":
            args = build_parser().parse_args(cmd[1:])
            out += [(name, k, v) for k, v in profiles.parse_overrides(args.param).items()]
    return out


def test_documented_run_parameters_are_declared() -> None:
    """``-p key=value`` of a documented ``hpr run`` names a parameter some notebook declares,
    with a value that notebook accepts."""
    books = sorted((REPO / "notebooks").glob("*.ipynb"))
    declared = {nb: profiles.declared_parameters(nb) for nb in books}
    for name, key, value in _documented_run_parameters():
        owners = [nb for nb, names in declared.items() if key in names]
        assert owners, f"{name}: no notebook declares parameter {key!r}"
        for nb in owners:
            profiles.validate_parameters(nb, {key: value})


def test_documented_subcommands_help(capsys: pytest.CaptureFixture[str]) -> None:
    subs = sorted({cmd[1] for _, cmd in documented() if cmd[0] in _HPR})
    assert {"run", "book", "train", "eval", "fetch"} <= set(subs)
    for sub in subs:
        with pytest.raises(SystemExit) as exc:
            main([sub, "--help"])
        assert exc.value.code == 0 and f"usage: hpr {sub}" in capsys.readouterr().out


def test_make_book_runs_the_study_and_html_does_not() -> None:
    """``make book`` executes the notebooks (``hpr run``); ``make html`` only rebuilds the book."""

    def dry(target: str) -> str:
        proc = subprocess.run(
            ["make", "-n", "-C", str(REPO), target], capture_output=True, text=True, check=False, timeout=60
        )
        assert proc.returncode == 0, proc.stderr
        return proc.stdout

    try:
        book, html = dry("book"), dry("html")
    except FileNotFoundError:
        pytest.skip("make is not installed")
    assert "hpr run --profile" in book and "hpr book" in book
    assert "hpr run" not in html and "hpr book" in html


def _truthfulqa_csv(path: Path) -> Path:
    rows = [
        ("Is the sky blue?", "Yes"),
        ("Do fish fly?", "No"),
        ("Is ice cold?", "Yes"),
        ("Do cats bark?", "No"),
        ("Is the sun a star?", "Yes"),
        ("Is the moon cheese?", "No"),
        ("Is snow white?", "Yes"),
        ("Do rocks swim?", "No"),
        ("Is fire hot?", "Yes"),
        ("Can pigs fly?", "No"),
    ]
    with open(path, "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(["Type", "Category", "Question", "Best Answer", "Correct Answers", "Incorrect Answers", "Source"])
        for q, a in rows:
            w.writerow(["Adversarial", "Misc", q, a, a, "No" if a == "Yes" else "Yes", "x"])
    return path


def _on_tiny(cmd: list[str], ckpt: Path, data: Path, tmp: Path) -> list[str]:
    """A documented command made cheap: the tiny model, local data, outputs in ``tmp``."""
    swap = {"--model": str(ckpt), "--source": "local", "--engine": "native"}
    out, i = [], 0
    while i < len(cmd):
        word = cmd[i]
        if word in swap:
            out += [word, swap[word]]
            i += 2
            continue
        if word in ("--out", "--editors"):
            out += [word, str(tmp / Path(cmd[i + 1]).name)]
            i += 2
            continue
        out.append(word)
        i += 1
    return out + ["--data-dir", str(data), "--device", "cpu"]


def test_documented_train_and_eval_run(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The README's ``hpr train`` then ``hpr eval`` chain runs, on a tiny model and local data."""
    from hpr.lm.tiny import byte_tokenizer, tiny_llama

    ckpt = tmp_path / "tiny"
    tiny_llama(seed=0, max_positions=2048).save_pretrained(ckpt)
    byte_tokenizer().save_pretrained(ckpt)
    data = _truthfulqa_csv(tmp_path / "TruthfulQA.csv")
    cmds: dict[str, list[str]] = {}
    for name, cmd in documented():  # the first README command of each kind: the train -> eval chain
        if name.startswith("README") and cmd[0] in _HPR and (cmd[1] != "eval" or "--dataset" in cmd):
            cmds.setdefault(cmd[1], cmd)
    train = _on_tiny(cmds["train"], ckpt, data, tmp_path) + ["--epochs", "1", "--k", "2"]
    assert main(train[1:]) == 0, capsys.readouterr().err
    ev = _on_tiny(cmds["eval"], ckpt, data, tmp_path) + [
        "--limit",
        "2",
        "--add-bos",
        "false",
        "--out",
        str(tmp_path / "eval"),
    ]
    assert main(ev[1:]) == 0, capsys.readouterr().err
    assert "truthfulqa mc1" in capsys.readouterr().out.lower()
    assert (tmp_path / "eval" / "results.json").is_file()


def test_fetch_no_models(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["fetch", "--no-models", "--no-data"]) == 0
    assert "model " not in capsys.readouterr().out  # nothing loaded
    assert main(["fetch", "--no-models", "--models", "gemma3-270m", "--no-data"]) == 2
    assert "contradict" in capsys.readouterr().err


def test_split_scheme_passed_only_when_given() -> None:
    import argparse
    import inspect

    from hpr.cli.common import data_kwargs
    from hpr.data import datasets as data
    from hpr.errors import ParameterError

    ns = argparse.Namespace(source="local", data_dir="d", seed=1, split_scheme=None)
    assert data_kwargs(ns) == {"source": "local", "data_dir": "d", "seed": 1}
    ns.split_scheme = "paper"
    if "scheme" in inspect.signature(data.load_split).parameters:
        assert data_kwargs(ns)["scheme"] == "paper"
    else:
        with pytest.raises(ParameterError, match="--split-scheme"):
            data_kwargs(ns)

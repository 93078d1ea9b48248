"""The rotation explorer on the tiny random model: callbacks, constant norm, offline player."""

from __future__ import annotations

import math

import pytest
import torch

from hpr.editor import HPR
from hpr.editor_set import EditorSet
from hpr.errors import ParameterError
from hpr.lm.architectures import fingerprint
from hpr.study.widget import RotationExplorer, offline_jshtml


@pytest.fixture
def explorer(tiny_model, tokenizer) -> RotationExplorer:
    torch.manual_seed(0)
    editors = EditorSet({1: HPR(64), 3: HPR(64)}, fingerprint(tiny_model, "tiny"), [1, 3])
    return RotationExplorer(tiny_model, tokenizer, editors, ["Q: Is the sky blue?\nA:", "Q: What is 2+2?\nA:"])


def test_frame_geometry(explorer: RotationExplorer) -> None:
    f0 = explorer.frame(1, 0, 0.0)
    assert f0.coords["rotated"] == pytest.approx(f0.coords["a"], abs=1e-5)
    f = explorer.frame(1, 0, f0.gamma)  # theta = gamma lands on Ha
    assert f.coords["rotated"] == pytest.approx(f.coords["Ha"], abs=1e-4)
    for theta in (0.3, 1.0, math.pi):
        g = explorer.frame(3, 1, theta)
        assert g.norm_rot == pytest.approx(g.norm_a, rel=1e-5)
        assert math.hypot(*g.coords["rotated"]) == pytest.approx(g.norm_a, rel=1e-4)
        assert sum(g.probs) <= 1.0 + 1e-6 and len(g.tokens) == 8


def test_slider_callbacks_change_picture_and_probabilities(explorer: RotationExplorer) -> None:
    w = explorer.widget()
    assert w is not None
    sliders = explorer._widgets
    first, png0 = explorer.last_frame, explorer.last_png
    assert first is not None and png0
    sliders["theta"].value = 2.0  # the observer recomputes
    second = explorer.last_frame
    assert second is not None and second.theta == pytest.approx(2.0)
    assert explorer.last_png != png0
    assert second.p != pytest.approx(first.p) or second.probs != first.probs
    assert second.probs != first.probs
    assert second.norm_rot == pytest.approx(first.norm_rot, rel=1e-5)
    assert sliders["image"].value == explorer.last_png
    sliders["layer"].value = 3
    assert explorer.last_frame.layer == 3
    sliders["example"].value = 1
    assert explorer.last_frame.example == 1
    assert "p(a')" in sliders["readout"].value


def test_jshtml_player_is_offline(explorer: RotationExplorer) -> None:
    html = explorer.jshtml(frames=3)
    assert "<link" not in html and "https://" not in html
    assert "anim" in html and "<img" in html
    assert offline_jshtml('<link rel="stylesheet" href="https://x/y.css">\n<p>') == "<p>"


def test_bad_inputs(explorer: RotationExplorer, tiny_model, tokenizer) -> None:
    with pytest.raises(ParameterError):
        explorer.frame(2, 0, 0.1)
    with pytest.raises(ParameterError):
        RotationExplorer(tiny_model, tokenizer, explorer.editors, [])

"""Guidance and prompts over time: the reference's linear guidance, schedules by time, and the
checks that refuse a schedule naming the wrong line."""

from __future__ import annotations

import pytest
import torch
from sampling_helpers import FakeDiT, random_text

import pyramid_core.sampling.stages as stages
from pyramid_core.models.text_encoders import PromptEmbeddings
from pyramid_core.sampling import (ConstantGuidance, GuidanceByTime, LinearGuidance, encode_prompt_schedule,
                                   image_to_video, text_to_video)
from pyramid_core.sampling.timeline import parse_timed_lines, unit_start_seconds

TINY = dict(width=128, height=64, steps=1, video_steps=1)


def _reference_linear_guidance(guidance_scale: float, temp: int, alpha=0.5, min_guidance_scale=2.0) -> list[float]:
    """The reference generate()'s list (use_linear_guidance), one entry per unit index."""
    return [max(guidance_scale - alpha * t_, min_guidance_scale) for t_ in range(temp)]


@pytest.fixture
def scales(monkeypatch):
    """The guidance scale of every denoising step, in order."""
    seen: list[float] = []
    original = stages.apply_guidance

    def record(prediction, scale):
        seen.append(scale)
        return original(prediction, scale)

    monkeypatch.setattr(stages, "apply_guidance", record)
    return seen


@pytest.mark.parametrize("start", [7.0, 9.0, 3.0, 1.5])
def test_linear_guidance_is_the_reference_formula(start):
    schedule = LinearGuidance(start)
    reference = _reference_linear_guidance(start, 31)
    assert [schedule.scale(unit, 0.0) for unit in range(31)] == reference
    assert LinearGuidance(7.0, alpha=1.0, minimum=4.0).scale(5, 0.0) == 4.0


def test_every_unit_gets_its_scheduled_guidance(scales):
    # 25 frames: units 0 (the first frame), 1, 2, 3; one step per stage, 3 stages
    text_to_video(FakeDiT(), random_text(), num_frames=25, guidance_schedule=LinearGuidance(7.0),
                  generator=torch.Generator().manual_seed(0), **TINY)
    assert scales == [s for s in _reference_linear_guidance(7.0, 4) for _ in range(3)]


def test_image_to_video_starts_the_schedule_at_unit_one(scales):
    """As the reference's generate_i2v: the image is unit 0, the first generated unit is unit 1."""
    image = torch.zeros(1, 16, 1, 8, 16)
    image_to_video(FakeDiT(), random_text(), image_latent=image, num_frames=17, video_steps=1,
                   guidance_schedule=LinearGuidance(7.0), generator=torch.Generator().manual_seed(0))
    assert scales == [6.5] * 3 + [6.0] * 3


def test_constant_and_by_time_schedules(scales):
    text_to_video(FakeDiT(), random_text(), num_frames=17, guidance_schedule=ConstantGuidance(4.0),
                  generator=torch.Generator().manual_seed(0), **TINY)
    assert scales == [4.0] * 9
    scales.clear()
    # units start at 0 s, 1/24 s and 9/24 s = 0.375 s
    schedule = GuidanceByTime.from_text("0: 7\n0.3s: 4.5\n")
    text_to_video(FakeDiT(), random_text(), num_frames=17, guidance_schedule=schedule,
                  generator=torch.Generator().manual_seed(0), **TINY)
    assert scales == [7.0] * 6 + [4.5] * 3
    assert [unit_start_seconds(k) for k in range(3)] == [0.0, 1 / 24, 9 / 24]


@pytest.mark.parametrize("text, message", [
    ("0: 7\n2: 5\n1: 3", r"line 3 '1: 3': times must rise; 1s does not come after line 2 \(2s\)"),
    ("0: 7\n-1: 5", r"line 2 '-1: 5': the time must be 0 seconds or more"),
    ("0: 7\nlater: 5", r"line 2 'later: 5': write '<seconds>: <value>'"),
    ("2: 7", r"line 1: the first entry must start at 0s"),
    ("", r"is empty"),
    ("0: 7\n1: lots", r"line 2 \(1s: lots\): guidance must be a finite number"),
    ("0: 7\n1: -2", r"line 2 \(1s: -2\): guidance=-2.0: guidance scales must be >= 0"),
])
def test_bad_guidance_schedules_name_the_line(text, message):
    with pytest.raises(ValueError, match=message):
        GuidanceByTime.from_text(text)


class FakeTextEncoder:
    """Embeddings that identify their prompt: row i of the output is prompt_number(prompt)."""

    def __init__(self):
        self.seen: list[str] = []

    def encode_prompt(self, prompts):
        self.seen.extend(prompts)
        rows = [float(len(self.seen) - len(prompts) + i) for i in range(len(prompts))]
        embeds = torch.tensor(rows).view(-1, 1, 1).expand(-1, 8, 32).clone()
        mask = torch.ones(len(prompts), 8, dtype=torch.int64)
        return PromptEmbeddings(embeds, mask, torch.tensor(rows).view(-1, 1).expand(-1, 16).clone())


class TextRecordingDiT(FakeDiT):
    def __init__(self):
        super().__init__()
        self.texts: list[torch.Tensor] = []

    def forward(self, sample, encoder_hidden_states, **kwargs):
        self.texts.append(encoder_hidden_states.clone())
        return super().forward(sample, encoder_hidden_states, **kwargs)


def test_each_unit_is_conditioned_on_the_prompt_in_force_at_its_first_frame():
    encoder = FakeTextEncoder()
    text = encode_prompt_schedule(encoder, "0s: a red fox walks\n0.3s: the fox runs", prompt_suffix=", 8K")
    assert encoder.seen[:2] == ["a red fox walks, 8K", "the fox runs, 8K"]        # one negative after them
    dit = TextRecordingDiT()
    text_to_video(dit, text, num_frames=17, generator=torch.Generator().manual_seed(0), **TINY)
    # 3 units x 3 stages x 1 step; rows [negative, positive]: the negative prompt is encoder row 2
    positives = [t[1, 0, 0].item() for t in dit.texts]
    negatives = [t[0, 0, 0].item() for t in dit.texts]
    assert positives == [0.0] * 6 + [1.0] * 3 and negatives == [2.0] * 9


def test_a_schedule_past_the_videos_end_is_refused_before_any_model_call():
    text = encode_prompt_schedule(FakeTextEncoder(), "0s: a\n1s: b")
    with pytest.raises(ValueError, match=r"prompt schedule, line 2 \(1s: b\) starts after the video's end: "
                                         r"9 frames last 0.333s"):
        text_to_video(FakeDiT(fail=True), text, num_frames=9, generator=torch.Generator().manual_seed(0), **TINY)
    with pytest.raises(ValueError, match=r"guidance schedule, line 2 \(5s: 3\) starts after the video's end"):
        text_to_video(FakeDiT(fail=True), random_text(), num_frames=9, guidance_schedule=GuidanceByTime.from_text(
            "0: 7\n5s: 3"), generator=torch.Generator().manual_seed(0), **TINY)


def test_timed_lines_keep_their_numbers_and_values():
    lines = parse_timed_lines("\n0s: a red fox: walks\n\n 2.5 s : it runs \n", "prompt schedule")
    assert [(line.number, line.seconds, line.value) for line in lines] == [(2, 0.0, "a red fox: walks"),
                                                                          (4, 2.5, "it runs")]

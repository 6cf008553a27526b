"""``python -m pyramid_core doctor``: a report a bug needs, and advice that follows the memory."""

from __future__ import annotations

import json

import pytest

from pyramid_core.cli import main
from pyramid_core.doctor import Device, recommendations


def test_the_report_names_versions_devices_backends_and_advice(capsys):
    assert main(["doctor"]) == 0
    text = capsys.readouterr().out
    for expected in ("versions:", "torch", "triton", "diffusers", "transformers", "comfyui", "devices:",
                     "attention on cpu:", "sdpa       works (float32, self-check passed)", "recommended on cpu:"):
        assert expected in text, expected
    assert main(["doctor", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["devices"][0]["name"] == "cpu" and report["attention"]["cpu"]["sdpa"].startswith("works")
    assert report["recommended"]["cpu"]["precision"].startswith("fp32")


def test_a_backend_that_gets_attention_wrong_is_reported(monkeypatch, capsys):
    import pyramid_core.doctor as doctor

    real = doctor.varlen_attention
    monkeypatch.setattr(doctor, "varlen_attention", lambda *a, **kw: real(*a, **kw) * 1.5)
    assert main(["doctor"]) == 0
    assert "sdpa       FAILS (float32): the forward differs from fp32 SDPA" in capsys.readouterr().out


@pytest.mark.parametrize("free, dtypes, precision, offload, tiles", [
    (75.0, ["fp32", "fp16", "bf16"], "bf16", "keep_on_gpu", ("whole frames", "whole frames")),
    (20.0, ["fp32", "fp16", "bf16"], "bf16", "auto", ("whole frames", "px tiles")),
    (7.0, ["fp32", "fp16"], "fp16", "offload_after_use", ("px tiles", "px tiles")),
])
def test_advice_follows_the_gpus_memory_and_dtypes(free, dtypes, precision, offload, tiles):
    advice = recommendations(Device("cuda:0", "a GPU", 80.0, free, dtypes, False))
    assert advice["precision"].startswith(precision) and advice["offload"].startswith(offload)
    for label, expected in zip(("vae 384p", "vae 768p"), tiles):
        assert advice[label].startswith("tile_size 0 (auto: ") and expected in advice[label], advice[label]
        assert float(advice[label].split(", ")[-1].removesuffix(" GiB)")) <= free

"""``auto``'s measured choice and the on-disk cache of choices and self-check verdicts.

No GPU here: the candidates' timings are injected, the machine key is a fixed string, and
the backends timed are real ones that run on the CPU (SDPA, and SageAttention's slot played
by a recording stand-in), so the dispatch path is the one a GPU takes.
"""

from __future__ import annotations

import json
import logging

import pytest
import torch

from pyramid_core.attention import chooser, disk_cache, dispatch, external, selfcheck, varlen_attention
from pyramid_core.attention.sdpa import varlen_attention_sdpa

MACHINE = "Test GPU sm90 torch x triton y kernels z"


def _kind(**overrides):
    fields = dict(dtype="bfloat16", head_dim=64, heads=30, kv_heads=30, masked=True, seq_len=32768, sequences=2,
                  training=False)
    return chooser.CallKind(**{**fields, **overrides})


def _times(ms: dict):
    """A measure() that returns the injected time of the candidate it is given."""
    def measure(run):
        return ms[run()] / 1e3
    return measure


def test_the_fastest_candidate_wins_and_the_next_process_reads_it_from_disk(tmp_path):
    cache = disk_cache.DiskCache(tmp_path / "attention.json")
    first = chooser.Chooser(cache, measure=_times({"triton": 12.6, "sdpa": 9.5}))
    runs = {"triton": lambda: "triton", "sdpa": lambda: "sdpa"}
    assert first.choose(MACHINE, _kind(), runs, torch.device("cpu")) == "sdpa"
    stored = json.loads((tmp_path / "attention.json").read_text())
    assert stored[MACHINE]["fastest"][_kind().label()] == {"backend": "sdpa", "ms": {"triton": 12.6, "sdpa": 9.5}}

    def never(run):
        raise AssertionError("a remembered kind is not timed again")

    later = chooser.Chooser(disk_cache.DiskCache(tmp_path / "attention.json"), measure=never)
    assert later.choose(MACHINE, _kind(), runs, torch.device("cpu")) == "sdpa" and later.timed == 0
    # another kind of call, or the same on other hardware / versions, is measured anew
    other = chooser.Chooser(cache, measure=_times({"triton": 0.71, "sdpa": 1.76}))
    assert other.choose(MACHINE, _kind(seq_len=8192), runs, torch.device("cpu")) == "triton"
    assert other.choose("Other GPU sm80 ...", _kind(), runs, torch.device("cpu")) == "triton"
    assert other.timed == 2


def test_a_candidate_that_fails_while_timed_is_left_out(tmp_path, caplog):
    def broken():
        raise RuntimeError("no kernel image for this GPU")

    c = chooser.Chooser(disk_cache.DiskCache(tmp_path / "a.json"), measure=lambda run: run() or 1.0)
    with caplog.at_level(logging.WARNING, logger="pyramid_core.attention"):
        assert c.choose(MACHINE, _kind(), {"triton": broken, "sdpa": lambda: None}, torch.device("cpu")) == "sdpa"
    assert "'triton' failed while being timed" in caplog.text and "no kernel image" in caplog.text
    with pytest.raises(RuntimeError, match="no attention backend could run"):
        c.choose(MACHINE, _kind(heads=2), {"triton": broken}, torch.device("cpu"))


def test_the_kind_of_a_call_comes_from_metadata_alone():
    # meta tensors have no values: reading any would fail, so this proves no host sync.
    q = torch.empty(30800 * 2, 30, 64, dtype=torch.bfloat16, device="meta")
    cu = torch.empty(3, dtype=torch.int32, device="meta")
    frames = torch.empty(q.shape[0], dtype=torch.int32, device="meta")
    kind = chooser.CallKind.of(q, q, cu, frames, training=False)
    assert kind == _kind()
    assert kind.label() == "bfloat16 d64 h30/30 frame-mask len<=32768 seqs<=2 infer"
    assert chooser.CallKind.of(q[:5960 * 2], q, cu, None, training=True).label() == \
        "bfloat16 d64 h30/30 no-mask len<=8192 seqs<=2 train"


def test_an_unreadable_cache_is_ignored_and_rewritten(tmp_path, caplog):
    path = tmp_path / "attention.json"
    path.write_text("{ half a file")
    cache = disk_cache.DiskCache(path)
    with caplog.at_level(logging.WARNING, logger="pyramid_core.attention"):
        assert cache.get(MACHINE, "fastest", "x") is None
    assert "ignoring the unreadable cache" in caplog.text
    cache.put(MACHINE, "fastest", "x", {"backend": "sdpa"})
    assert json.loads(path.read_text()) == {MACHINE: {"fastest": {"x": {"backend": "sdpa"}}}}
    assert [p.name for p in tmp_path.iterdir()] == ["attention.json"]      # no temporary file left


def test_the_cache_can_be_switched_off(tmp_path, monkeypatch):
    monkeypatch.setenv(disk_cache.ENABLE_ENV, "0")
    cache = disk_cache.DiskCache(tmp_path / "attention.json")
    cache.put(MACHINE, "fastest", "x", 1)
    assert cache.get(MACHINE, "fastest", "x") == 1 and not (tmp_path / "attention.json").exists()


def test_where_the_cache_lives(monkeypatch, tmp_path):
    monkeypatch.delenv(disk_cache.CACHE_DIR_ENV, raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert disk_cache.cache_dir() == tmp_path / "xdg" / "pyramid_core"
    monkeypatch.setenv(disk_cache.CACHE_DIR_ENV, str(tmp_path / "mine"))
    assert disk_cache.cache_dir() == tmp_path / "mine"


def test_clear_removes_our_file_and_our_kernels_autotune_entries_only(tmp_path, monkeypatch):
    from triton import knobs

    monkeypatch.setattr(disk_cache, "shared", disk_cache.DiskCache(tmp_path / "ours" / "attention.json"))
    disk_cache.shared.put(MACHINE, "fastest", "x", 1)
    triton_dir = tmp_path / "triton"
    ours = triton_dir / "abc123" / "_varlen_fwd_kernel.autotune.json"
    theirs = triton_dir / "def456" / "matmul_kernel.autotune.json"
    for path in (ours, theirs):
        path.parent.mkdir(parents=True)
        path.write_text("{}")
    monkeypatch.setattr(knobs.cache, "dir", str(triton_dir))
    assert disk_cache.triton_autotune_files() == [ours]
    assert sorted(disk_cache.clear()) == sorted([tmp_path / "ours" / "attention.json", ours])
    assert theirs.exists() and not ours.exists() and disk_cache.shared.get(MACHINE, "fastest", "x") is None


@pytest.fixture
def timed_dispatch(tmp_path, monkeypatch):
    """``auto`` on a pretend GPU: SDPA and a recording stand-in in Sage's slot are the candidates."""
    calls = []

    def stand_in(q, k, v, cu_seqlens, frame_ids=None, scale=None):
        calls.append(q.shape)
        return varlen_attention_sdpa(q, k, v, cu_seqlens, frame_ids, scale)

    def measure(run):               # the stand-in is "faster" than SDPA
        before = len(calls)
        run()
        return 1e-3 if len(calls) > before else 2e-3

    monkeypatch.setattr(external, "varlen_attention_sage", stand_in)
    monkeypatch.setattr(dispatch, "_candidates", lambda q, frame_ids: ["sage", "sdpa"])
    monkeypatch.setattr(disk_cache, "machine_key", lambda device: MACHINE)
    monkeypatch.setattr(chooser, "shared", chooser.Chooser(disk_cache.DiskCache(tmp_path / "a.json"), measure=measure))
    monkeypatch.delenv(dispatch.ENV_VAR, raising=False)
    return calls


def test_auto_times_the_candidates_once_per_kind_then_uses_the_winner(timed_dispatch):
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(50, 2, 16, generator=g) for _ in range(3))
    cu = torch.tensor([0, 20, 50], dtype=torch.int32)
    frames = torch.tensor([0] * 5 + [1] * 15 + [0] * 10 + [1] * 10 + [2] * 10, dtype=torch.int32)
    out = varlen_attention(q, k, v, cu, frame_ids=frames)
    torch.testing.assert_close(out, varlen_attention_sdpa(q, k, v, cu, frames))
    assert chooser.shared.timed == 1 and len(timed_dispatch) == 2      # timed once, then served the call
    varlen_attention(q, k, v, cu, frame_ids=frames)
    assert chooser.shared.timed == 1 and len(timed_dispatch) == 3      # remembered
    # a training call is its own kind: timed with its backward
    qg = q.clone().requires_grad_()
    varlen_attention(qg, k, v, cu, frame_ids=frames).sum().backward()
    assert chooser.shared.timed == 2 and qg.grad is not None


def test_a_backend_asked_for_by_name_is_never_timed(timed_dispatch):
    q = torch.randn(8, 1, 16)
    varlen_attention(q, q, q, torch.tensor([0, 8], dtype=torch.int32), backend="sdpa")
    assert chooser.shared.timed == 0 and not timed_dispatch


def test_self_check_verdicts_are_reused_from_disk(tmp_path, monkeypatch):
    monkeypatch.delenv(selfcheck.ENV_VAR, raising=False)
    monkeypatch.setattr(disk_cache, "shared", disk_cache.DiskCache(tmp_path / "a.json"))
    monkeypatch.setattr(selfcheck, "_machine", lambda device: MACHINE)
    selfcheck.reset()
    q, frames = torch.randn(4, 2, 64), torch.zeros(4, dtype=torch.int32)

    def exact(q, k, v, cu, f):
        return varlen_attention_sdpa(q, k, v, cu, f)

    assert selfcheck.forward_ok(exact, q, frames) and selfcheck.checks_run() == 1
    stored = json.loads((tmp_path / "a.json").read_text())[MACHINE]["selfcheck"]
    assert stored == {"float32 d64 frame-mask forward": {"problem": None}}
    selfcheck.reset()                       # a new process: the verdict comes from disk

    def must_not_run(*args):
        raise AssertionError("the check ran again")

    assert selfcheck.forward_ok(must_not_run, q, frames) and selfcheck.checks_run() == 0
    selfcheck.reset()


def test_the_cache_command_shows_and_clears(tmp_path, monkeypatch, capsys):
    from pyramid_core.cli import main

    monkeypatch.setattr(disk_cache, "shared", disk_cache.DiskCache(tmp_path / "attention.json"))
    assert main(["cache"]) == 0
    assert f"attention cache: {tmp_path / 'attention.json'} (empty)" in capsys.readouterr().out
    disk_cache.shared.put(MACHINE, "fastest", _kind().label(), {"backend": "sdpa"})
    assert main(["cache"]) == 0
    shown = capsys.readouterr().out
    assert MACHINE in shown and "fastest: bfloat16 d64 h30/30 frame-mask" in shown and "'backend': 'sdpa'" in shown
    assert main(["cache", "--clear"]) == 0
    assert str(tmp_path / "attention.json") in capsys.readouterr().out and not (tmp_path / "attention.json").exists()
    assert main(["cache", "--clear"]) == 0 and "nothing to remove" in capsys.readouterr().out

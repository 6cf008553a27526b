"""``generate-batch`` and ``generate --parallel`` on tiny stand-in checkpoints, one process and torchrun.

Every job kind runs in one file: text-to-video (a prompt twice, over two seeds), a one-frame
image, image-to-video from a png and continuation of an mp4. Latents come back through
``--save-latents``; the one-process reference runs under torchrun too, with the same one
thread per process, so "identical" can mean bit for bit.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

pytest.importorskip("av")

from pyramid_core.cli import main  # noqa: E402
from pyramid_core.video_io import write_image, write_video  # noqa: E402
from support import REPO_ROOT, torchrun, torchrun_command  # noqa: E402

sys.path.insert(0, str(REPO_ROOT / "scripts"))
from tiny_checkpoints import tiny_generate_options  # noqa: E402

JOBS = [
    {"id": "cat-1", "prompt": "a red cat", "seed": 1},
    {"id": "cat-2", "prompt": "a red cat", "seed": 2, "video_guidance": 3},
    {"id": "still", "prompt": "the blue sky", "seed": 3, "frames": 1},
    {"id": "from-image", "prompt": "a dog runs", "seed": 4, "image": "inputs/first.png"},
    {"id": "longer", "prompt": "the sea", "seed": 5, "video": "inputs/clip.mp4", "frames": 17, "steps": [1, 1, 1]},
]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """Tiny models, the input media and the jobs file; returns (root, model options)."""
    root = tmp_path_factory.mktemp("batch")
    options = tiny_generate_options(root / "models", frames=9)
    g = torch.Generator().manual_seed(0)
    write_image(root / "inputs" / "first.png", torch.randint(0, 256, (64, 128, 3), dtype=torch.uint8, generator=g))
    write_video(root / "inputs" / "clip.mp4", torch.randint(0, 256, (9, 64, 128, 3), dtype=torch.uint8, generator=g))
    write_jobs(root / "jobs.jsonl", JOBS)
    return root, options


def finished_videos(out: Path) -> dict[str, int]:
    """Output mp4s (not hidden files being written) and their modification times."""
    return {p.name: p.stat().st_mtime_ns for p in out.glob("job-*.mp4")}


def write_jobs(path: Path, jobs: list[dict]) -> Path:
    path.write_text("".join(json.dumps(job) + "\n" for job in jobs))
    return path


def batch_args(root: Path, options: list[str], out: Path, *extra: str, jobs: str = "jobs.jsonl") -> list[str]:
    return ["-m", "pyramid_core", "generate-batch", "--prompts", str(root / jobs), "--out-dir", str(out),
            "--save-latents", *options, *extra]


def run_ranks(nproc: int, args: list[str]) -> subprocess.CompletedProcess:
    done = torchrun(nproc, *args, timeout=400)
    assert done.returncode == 0, done.stderr[-4000:]
    return done


def latents(out: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return {p.stem: load_file(str(p))["latents"] for p in sorted(out.glob("*.safetensors"))}


def results(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def one_process(setup):
    root, options = setup
    out = root / "one"
    done = run_ranks(1, batch_args(root, options, out))
    summary = json.loads(done.stdout.strip().splitlines()[-1])
    return out, summary


def test_one_process_runs_every_kind_of_job(setup, one_process):
    out, summary = one_process
    assert summary["ok"] == len(JOBS) and summary["failed"] == 0 and summary["already_done"] == 0
    # 4 distinct prompts (the cat twice) and the one default negative prompt
    assert summary["texts_encoded"] == 5
    assert sorted(p.name for p in out.iterdir() if not p.name.startswith(".")) == sorted(
        [f"{j['id']}{'.png' if j.get('frames') == 1 else '.mp4'}" for j in JOBS]
        + [f"{j['id']}.safetensors" for j in JOBS] + ["results.jsonl"])
    shapes = {k: tuple(v.shape) for k, v in latents(out).items()}
    assert shapes == {"cat-1": (1, 16, 2, 8, 16), "cat-2": (1, 16, 2, 8, 16), "still": (1, 16, 1, 8, 16),
                      "from-image": (1, 16, 2, 8, 16), "longer": (1, 16, 3, 8, 16)}
    assert [r["id"] for r in results(out)] == [j["id"] for j in JOBS]
    assert {r["status"] for r in results(out)} == {"ok"}


def test_two_processes_write_the_jobs_of_one_with_identical_latents(setup, one_process):
    root, options = setup
    reference, _ = one_process
    out = root / "two"
    done = run_ranks(2, batch_args(root, options, out))
    assert "[group 1/2]" in done.stderr and "[group 2/2]" in done.stderr     # both ranks took jobs
    ranks = {r["rank"] for r in results(out)}
    assert ranks == {0, 1}
    mine, theirs = latents(out), latents(reference)
    assert sorted(mine) == sorted(theirs)
    for key in theirs:
        assert torch.equal(mine[key], theirs[key]), key


@pytest.mark.parametrize("mode, nproc", [("cfg", 2), ("sequence", 2), ("cfg+sequence", 4)])
def test_one_video_over_several_processes_matches_one_process(setup, one_process, mode, nproc):
    root, options = setup
    reference, _ = one_process
    out = root / mode
    run_ranks(nproc, batch_args(root, options, out, "--parallel", mode))
    assert {r["rank"] for r in results(out)} == {0}              # one group: its leader writes everything
    mine, theirs = latents(out), latents(reference)
    assert sorted(mine) == sorted(theirs)
    for key in theirs:
        scale = theirs[key].abs().max().item()
        assert (mine[key] - theirs[key]).abs().max().item() <= 1e-5 * scale, key


def test_generate_parallel_cfg_writes_one_video(setup, tmp_path):
    root, options = setup
    out = tmp_path / "cat.mp4"
    done = run_ranks(2, ["-m", "pyramid_core", "generate", "t2v", "--prompt", "a red cat", "--output", str(out),
                         "--parallel", "cfg", *options])
    assert out.is_file() and done.stdout.strip().splitlines() == [str(out)]   # printed by rank 0 only


def test_a_killed_batch_finishes_only_the_remaining_jobs_when_rerun(setup, tmp_path):
    root, options = setup
    jobs = [{"id": f"job-{i}", "prompt": f"a cat runs over the sea {i}", "seed": i, "frames": 17} for i in range(8)]
    write_jobs(tmp_path / "many.jsonl", jobs)
    out = tmp_path / "out"
    cmd, env = torchrun_command(2, *batch_args(tmp_path, options, out, jobs="many.jsonl"))
    run = subprocess.Popen(cmd, env=env, cwd=REPO_ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 300
        while not finished_videos(out) and run.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        # a preemption: the scheduler sends SIGTERM, torchrun passes it on and both ranks die mid-job
        run.send_signal(signal.SIGTERM)
        run.wait(timeout=120)
    first = finished_videos(out)
    assert 1 <= len(first) < len(jobs), "the kill should land mid-batch"

    done = run_ranks(2, batch_args(tmp_path, options, out, jobs="many.jsonl"))
    summary = json.loads(done.stdout.strip().splitlines()[-1])
    assert summary == {**summary, "ok": len(jobs) - len(first), "failed": 0, "already_done": len(first)}
    assert sorted(finished_videos(out)) == sorted(f"{j['id']}.mp4" for j in jobs)
    assert {name: (out / name).stat().st_mtime_ns for name in first} == first      # not made again
    records = results(out)
    assert [r["id"] for r in records] == [j["id"] for j in jobs] and {r["status"] for r in records} == {"ok"}


def test_bad_jobs_are_reported_with_their_lines_before_any_model_loads(setup, tmp_path, capsys):
    root, options = setup
    (tmp_path / "bad.jsonl").write_text("\n".join([
        '{"id": "a", "prompt": "x"}',
        '{"id": "b", "prompt": "x", "colour": "red"}',
        "{not json",
        '{"id": "c", "prompt": "x", "image": "missing.png"}',
        '{"id": "a", "prompt": "y"}',
        '{"id": "d", "prompt": "x", "dtype": "fp16"}',
        '{"id": "e", "prompt": "x", "frames": 10}',
        '{"id": "../f", "prompt": "x"}',
        '{"id": "g"}',
        '{"id": "A", "prompt": "z"}',
    ]) + "\n")
    not_a_model = ["--dit", str(tmp_path / "no_such_dit.safetensors"), *options[2:]]
    code = main(["generate-batch", "--prompts", str(tmp_path / "bad.jsonl"), "--out-dir", str(tmp_path / "o"),
                 *not_a_model])
    err = capsys.readouterr().err
    assert code == 2
    for expected in ['9 bad job(s), nothing was run', 'line 2: unknown field "colour"', "line 3: not JSON",
                     'line 4: "image"', "missing.png: no such file", 'line 5: duplicate id "a" (first on line 1)',
                     'line 6: "dtype" holds for the whole run', "line 7: ", "1 + 8k", 'line 8: "id" must be a file name',
                     'line 9: no "prompt"',
                     'line 10: duplicate id "A" (first on line 1 as "a": ids that differ only in case name one file)']:
        assert expected in err, expected
    assert not (tmp_path / "o").exists()


def test_parallel_without_torchrun_says_what_to_launch(setup, tmp_path, capsys):
    _, options = setup
    assert main(["generate", "t2v", "--prompt", "x", "--parallel", "cfg", *options]) == 2
    assert "launch `torchrun --nproc_per_node 2 -m pyramid_core generate ... --parallel cfg`" in capsys.readouterr().err
    assert main(["generate-batch", "--prompts", str(tmp_path / "j.jsonl"), "--out-dir", str(tmp_path),
                 "--parallel", "sequence", *options]) == 2
    assert "at least 2 processes" in capsys.readouterr().err


def test_under_torchrun_a_bad_file_is_reported_once(setup, tmp_path):
    _, options = setup
    write_jobs(tmp_path / "dup.jsonl", [{"id": "a", "prompt": "x"}, {"id": "a", "prompt": "y"}])
    done = torchrun(2, *batch_args(tmp_path, options, tmp_path / "o", jobs="dup.jsonl"), timeout=200)
    assert done.returncode != 0
    assert done.stderr.count('line 2: duplicate id "a"') == 1, done.stderr[-2000:]


def test_a_launch_error_is_said_by_rank_0_and_by_another_rank_only_after_its_wait(monkeypatch, capsys):
    """Rank 0 says a user error at once; another rank waits for torchrun to end the launch (so it
    cannot have rank 0 stopped before it printed) and says it only when nothing ended it."""
    from pyramid_core import distributed

    waits = []
    monkeypatch.setattr(distributed.time, "sleep", waits.append)
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    distributed.report_launch_error("error: bad")
    assert capsys.readouterr().err == "error: bad\n" and waits == []
    monkeypatch.setenv("RANK", "1")
    distributed.report_launch_error("error: only here")
    assert capsys.readouterr().err == "[rank 1] error: only here\n"
    assert waits == [distributed.LAUNCH_ERROR_GRACE_S]

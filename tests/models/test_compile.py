"""torch.compile of the DiT blocks on the CPU (inductor): the eager video within tolerance,
and compiled once: a longer video, with more units and a longer history, compiles nothing new."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "sampling"))
from sampling_helpers import random_text  # noqa: E402

from golden_utils import load_config, load_weights  # noqa: E402
from pyramid_core import compile as compiling  # noqa: E402
from pyramid_core.loading import build_from_state_dict  # noqa: E402
from pyramid_core.sampling import text_to_video  # noqa: E402


def _tiny(family: str) -> torch.nn.Module:
    config = {k: v for k, v in load_config(f"config_{family}_tiny.json").items() if not k.startswith("_")}
    return build_from_state_dict(family, load_weights(f"weights_{family}_tiny.safetensors"), config, torch.float32)


def _video(dit, frames: int, width: int = 128, height: int = 64) -> torch.Tensor:
    return text_to_video(dit, random_text(), width=width, height=height, num_frames=frames, steps=2, video_steps=1,
                         generator=torch.Generator().manual_seed(3))


@pytest.mark.parametrize("family", ["flux", "mmdit"])
def test_compiled_blocks_give_the_eager_video_and_compile_once(family):
    import torch._dynamo

    torch._dynamo.reset()
    dit = _tiny(family)
    eager = _video(dit, 17)
    compiling.compile_dit(dit)
    assert compiling.is_compiled(dit)
    torch._dynamo.utils.counters.clear()
    # inductor reorders and fuses float ops: a few fp32 roundings on values of about 1
    torch.testing.assert_close(_video(dit, 17), eager, rtol=0, atol=1e-4)
    graphs = torch._dynamo.utils.counters["stats"]["unique_graphs"]
    # 17 frames: 3 units (the first frame with 2 steps per stage, then 1), 12 DiT calls. The
    # graphs are per kind of block, attention-free half and first-frame-or-history variant,
    # not per call: fewer than the block calls of this one video.
    block_calls = 12 * len(compiling._blocks(dit))
    print(f"{family}: {graphs} graphs for {block_calls} block calls")
    assert 0 < graphs < block_calls
    _video(dit, 33)                                          # 2 more units, a longer history
    _video(dit, 17, width=256, height=128)                   # another size at every stage
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] == graphs


def test_compile_says_what_is_missing(monkeypatch):
    dit = _tiny("flux")
    monkeypatch.setattr(compiling.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ValueError, match="has no inductor: torch.compile cannot be used"):
        compiling.compile_dit(dit)
    monkeypatch.undo()
    monkeypatch.setattr(compiling.shutil, "which", lambda name: None)
    with pytest.raises(ValueError, match="needs a C\\+\\+ compiler"):
        compiling.compile_dit(dit)
    with pytest.raises(ValueError, match="compile mode 'fast'"):
        compiling.compile_dit(dit, mode="fast")

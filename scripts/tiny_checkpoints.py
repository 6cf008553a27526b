"""Tiny stand-in checkpoints for the shipped workflows (no downloads, random weights).

Used by the real-ComfyUI tests and by the demo (``scripts/demo.py``): the real weights
cannot be fetched on the machines this project is tested on, so the workflows run on tiny
models in the official layouts under the file names the workflows expect.

* DiTs: the golden tiny miniFLUX/SD3 weights (official tensor names) as single files in
  ``diffusion_models/`` -- their configs are derived from the tensor shapes, as for the
  released single files -- or as an official folder where a workflow names one.
* VAE: the golden tiny causal VAE as a single file in ``vae/`` with its config in the
  safetensors metadata (the released VAE needs none; a tiny one must say its size).
* Text encoders: an official-layout folder (``tokenizer/``, ``text_encoder/``,
  ``tokenizer_2/``, ``text_encoder_2/``) with a 1-layer CLIP (pooled width 16) and T5
  (width 32), the widths the tiny DiTs take (``write_text_encoder_folder`` with other words:
  the toy world's text encoders).
* LoRA: a peft-style (``lora_A``/``lora_B``) LoRA for the tiny miniFLUX.

:func:`shrink` turns a shipped API workflow into one these models can run quickly.
"""

from __future__ import annotations

import copy
import json
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from ui_workflows import replace_node, set_widget_values

ROOT = Path(__file__).resolve().parent.parent
GOLDEN = ROOT / "tests" / "data" / "golden"
WORDS = "a an the cat dog runs jumps over red blue sky sea movie trailer tiny test prompt , . ! space man".split()
CLIP_SPECIALS = ["<|startoftext|>", "<|endoftext|>", "<pad>", "<unk>"]
T5_SPECIALS = ["<pad>", "</s>", "<unk>"]
CLIP_WIDTH = 16      # pooled_projection_dim of the tiny DiTs
T5_WIDTH = 32        # joint_attention_dim of the tiny DiTs


def is_folder_name(name: str) -> bool:
    """Whether a loader value names an official folder (no weight-file suffix) rather than a file."""
    return not name.endswith((".safetensors", ".sft", ".bin", ".pt", ".pth"))


def write_tiny_dit(models_dir: Path, name: str, family: str = "flux") -> Path:
    """The golden tiny DiT as ``diffusion_models/<name>``: a single file, or for a folder name an
    official folder (config.json + weights)."""
    target = Path(models_dir) / "diffusion_models" / name
    if is_folder_name(name):
        target.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(GOLDEN / f"config_{family}_tiny.json", target / "config.json")
        shutil.copyfile(GOLDEN / f"weights_{family}_tiny.safetensors", target / "diffusion_pytorch_model.safetensors")
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(GOLDEN / f"weights_{family}_tiny.safetensors", target)
    return target


def write_tiny_vae(models_dir: Path, name: str, folder: str = "vae") -> Path:
    target = Path(models_dir) / folder / name
    target.parent.mkdir(parents=True, exist_ok=True)
    single_file(GOLDEN / "config_vae_tiny.json", GOLDEN / "weights_vae_tiny.safetensors", target)
    return target


def single_file(config: Path, weights: Path, target: Path) -> None:
    """Weights and their config.json as one safetensors file, the config in its metadata (the
    DiT loader derives a config from the shapes; a VAE smaller than the released one must say its size)."""
    settings = {k: v for k, v in json.loads(Path(config).read_text()).items() if not k.startswith("_")}
    save_file(load_file(str(weights)), str(target), metadata={"config": json.dumps(settings), "format": "pt"})


def write_tiny_lora(models_dir: Path, name: str, rank: int = 2, seed: int = 0) -> Path:
    """A peft-style LoRA on every attention projection of the tiny miniFLUX."""
    weights = load_file(str(GOLDEN / "weights_flux_tiny.safetensors"))
    generator = torch.Generator().manual_seed(seed)
    lora = {}
    for key, value in weights.items():
        if key.endswith((".attn.to_q.weight", ".attn.to_k.weight", ".attn.to_v.weight")):
            module = "transformer." + key[: -len(".weight")]
            out_features, in_features = value.shape
            lora[f"{module}.lora_A.weight"] = torch.randn(rank, in_features, generator=generator) * 0.5
            lora[f"{module}.lora_B.weight"] = torch.randn(out_features, rank, generator=generator) * 0.5
    target = Path(models_dir) / "loras" / name
    target.parent.mkdir(parents=True, exist_ok=True)
    save_file(lora, str(target))
    return target


# --------------------------------------------------------------------------------------
# text encoders
# --------------------------------------------------------------------------------------

def _word_tokenizer(specials: list[str], template: str, words: list[str], **special_tokens):
    import tokenizers
    import transformers

    vocab = {token: i for i, token in enumerate(dict.fromkeys(specials + list(words)))}  # first of duplicates
    core = tokenizers.Tokenizer(tokenizers.models.WordLevel(vocab, unk_token=special_tokens["unk_token"]))
    core.pre_tokenizer = tokenizers.pre_tokenizers.WhitespaceSplit()
    core.post_processor = tokenizers.processors.TemplateProcessing(
        single=template, special_tokens=[(t, vocab[t]) for t in specials if t in template])
    return transformers.PreTrainedTokenizerFast(tokenizer_object=core, **special_tokens), vocab


def tiny_clip(seed: int = 0, words: list[str] = WORDS):
    import transformers

    torch.manual_seed(seed)
    tokenizer, vocab = _word_tokenizer(
        CLIP_SPECIALS, "<|startoftext|> $A <|endoftext|>", words, bos_token="<|startoftext|>",
        eos_token="<|endoftext|>", pad_token="<|endoftext|>", unk_token="<unk>", model_max_length=77)
    config = transformers.CLIPTextConfig(
        vocab_size=len(vocab), hidden_size=CLIP_WIDTH, intermediate_size=2 * CLIP_WIDTH, num_hidden_layers=1,
        num_attention_heads=2, max_position_embeddings=77, projection_dim=CLIP_WIDTH,
        bos_token_id=vocab["<|startoftext|>"], eos_token_id=vocab["<|endoftext|>"],
        pad_token_id=vocab["<|endoftext|>"], hidden_act="quick_gelu")
    return tokenizer, transformers.CLIPTextModel(config).eval()


def tiny_t5(seed: int = 1, words: list[str] = WORDS):
    import transformers

    torch.manual_seed(seed)
    tokenizer, vocab = _word_tokenizer(
        T5_SPECIALS, "$A </s>", words, eos_token="</s>", pad_token="<pad>", unk_token="<unk>", model_max_length=512)
    config = transformers.T5Config(
        vocab_size=len(vocab), d_model=T5_WIDTH, d_ff=48, d_kv=8, num_heads=2, num_layers=1,
        feed_forward_proj="gated-gelu", relative_attention_num_buckets=32, pad_token_id=0, eos_token_id=1,
        decoder_start_token_id=0)
    return tokenizer, transformers.T5EncoderModel(config).eval()


def write_text_encoder_folder(root: Path, words: list[str] = WORDS) -> Path:
    """The tiny CLIP and T5 (random, seeded; one word per token from ``words``) as an official
    miniFLUX-layout folder: ``tokenizer/``, ``text_encoder/``, ``tokenizer_2/``, ``text_encoder_2/``."""
    root = Path(root)
    for (tok_dir, enc_dir), (tokenizer, model) in ((("tokenizer", "text_encoder"), tiny_clip(words=words)),
                                                   (("tokenizer_2", "text_encoder_2"), tiny_t5(words=words))):
        tokenizer.save_pretrained(root / tok_dir)
        model.save_pretrained(root / enc_dir)
    return root


def write_tiny_text_encoders(models_dir: Path, name: str) -> Path:
    """:func:`write_text_encoder_folder` in ``models_dir/text_encoders/name``."""
    return write_text_encoder_folder(Path(models_dir) / "text_encoders" / name)


def tiny_generate_options(models_dir: Path, frames: int = 9) -> list[str]:
    """Tiny stand-ins written under ``models_dir``, as ``python -m pyramid_core generate`` options:
    the three model paths, fp32 on the CPU, 128x64 px, ``frames`` pixel frames, 1 step per stage."""
    return ["--dit", str(write_tiny_dit(models_dir, "dit_384p.safetensors")),
            "--vae", str(write_tiny_vae(models_dir, "vae.safetensors")),
            "--text-encoders", str(write_tiny_text_encoders(models_dir, "text")),
            "--dtype", "fp32", "--device", "cpu", "--width", "128", "--height", "64", "--frames", str(frames),
            "--steps", "1", "--video-steps", "1"]


def write_random_model_folder(root: Path, text_encoders: Path) -> Path:
    """The random tiny miniFLUX DiT and VAE as an official folder (``diffusion_transformer_384p/``,
    ``causal_video_vae/``) with the text encoder folders of ``text_encoders`` copied beside them:
    the toy model's layout with untrained weights, on which the quality checks must fail."""
    root = Path(root)
    for folder, stem in (("diffusion_transformer_384p", "flux"), ("causal_video_vae", "vae")):
        (root / folder).mkdir(parents=True, exist_ok=True)
        shutil.copyfile(GOLDEN / f"config_{stem}_tiny.json", root / folder / "config.json")
        shutil.copyfile(GOLDEN / f"weights_{stem}_tiny.safetensors", root / folder / "diffusion_pytorch_model.safetensors")
    for name in ("tokenizer", "text_encoder", "tokenizer_2", "text_encoder_2"):
        shutil.copytree(Path(text_encoders) / name, root / name, dirs_exist_ok=True)
    return root


# --------------------------------------------------------------------------------------
# the server's model folders and the shipped workflows, shrunk
# --------------------------------------------------------------------------------------

WORKFLOWS = ROOT / "workflows" / "api"
TINY_TEXT_ENCODERS = "pyramid-flow-tiny"
WIDTH, HEIGHT, FRAMES = 128, 64, 9          # 2 latent frames: the first frame and one video unit


def workflow_model_names() -> dict[str, dict[str, str]]:
    """``{model folder: {name: stand-in kind}}``: every DiT and VAE file or folder the shipped
    workflows load (the published names, see pyramid_core/hub/catalog.py), read from them."""
    names: dict[str, dict[str, str]] = {"diffusion_models": {}, "vae": {}}
    for path in sorted(WORKFLOWS.glob("*.json")):
        for node in json.loads(path.read_text()).values():
            if node["class_type"] == "PyramidFlowDiTLoader":
                names["diffusion_models"][node["inputs"]["dit_name"]] = "flux"
            elif node["class_type"] == "PyramidFlowVAELoader":
                names["vae"][node["inputs"]["vae_name"]] = "vae"
    return names


MODEL_FILES = workflow_model_names()         # names the workflows expect -> tiny stand-in


# The toy model (scripts/train_toy_model.py, committed): what the demo and the page run, so that
# their videos show the prompted shape moving. Its DiT is a 384p-variant miniFLUX; the 768p and
# image variants share its latent normalisation and scheduler, so it serves all three names.
TOY_MODEL = ROOT / "toy_model" / "pyramid-flow-toy"
TOY_TEXT_ENCODERS = "pyramid-flow-toy"
TOY_PREVIEW = "pyramid-flow-toy-preview.json"     # in models/vae: the toy VAE's preview colours (fit-preview)
TOY_SIZE, TOY_FRAMES, TOY_CONTEXT_FRAMES = 128, 17, 9      # the toy world's clips; continuation: 9 -> 17
TOY_STEPS = 10                  # per stage; the guidance is ToySettings' (the first frame's and the video units')
# What each shipped workflow asks the toy model for: (colour, shape, direction, background).
# Any case of the toy world would do: the demo and the page sample them at one seed for all
# (TOY_SEED) and the demo judges what came out (judge_toy_output), while the model's success
# rates over many seeds are in its MODEL_CARD.md and quality.json.
TOY_CASES = {
    "pyramid_flow_t2v_384p": ("yellow", "triangle", "right", "gray"),
    "pyramid_flow_t2v_768p": ("green", "circle", "up", "black"),
    "pyramid_flow_t2v_per_stage": ("red", "square", "right", "black"),
    "pyramid_flow_i2v_384p": ("yellow", "square", "up", "gray"),
    "pyramid_flow_continue_384p": ("green", "square", "down", "striped"),
    "pyramid_flow_t2i_1024p": ("yellow", "circle", "left", "gray"),
}
# The image-to-video and continuation workflows get a toy image / clip of a scene as input: that
# of ``pyramid_core.toy.checks.scene_for(seed)`` (their TOY_CASES entries are its caption).
TOY_SCENE_SEEDS = {"pyramid_flow_i2v_384p": 9, "pyramid_flow_continue_384p": 3}
# The seed the demo and serve's toy templates sample every workflow with: the same for all, not
# one picked where the model happens to be right.
TOY_SEED = 0


def write_stand_ins(models_dir: Path, input_dir: Path, toy: bool = False) -> None:
    """Stand-in checkpoints under every file name the workflows expect, plus their input media:
    the tiny random-weight models, or (``toy``) the toy model and toy-world inputs."""
    if toy:
        write_toy_stand_ins(models_dir, input_dir)
        return
    for name, family in MODEL_FILES["diffusion_models"].items():
        write_tiny_dit(models_dir, name, family)
    for name in MODEL_FILES["vae"]:
        write_tiny_vae(models_dir, name)
    write_tiny_text_encoders(models_dir, TINY_TEXT_ENCODERS)
    write_inputs(input_dir)


def write_toy_stand_ins(models_dir: Path, input_dir: Path) -> None:
    """The toy model under the workflows' file names, as single files (its config in the metadata)
    or official folders, its text encoders as ``text_encoders/pyramid-flow-toy``, its preview
    colours as ``vae/`` :data:`TOY_PREVIEW`, and the toy inputs."""
    models_dir = Path(models_dir)
    if not TOY_MODEL.is_dir():
        raise FileNotFoundError(f"{TOY_MODEL} is missing: it is committed; rebuild it with scripts/train_toy_model.py")
    for kind, folder in (("diffusion_models", "diffusion_transformer_384p"), ("vae", "causal_video_vae")):
        for name in MODEL_FILES[kind]:
            target = models_dir / kind / name
            if is_folder_name(name):                 # an official folder, as the release's
                shutil.copytree(TOY_MODEL / folder, target, dirs_exist_ok=True)
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            single_file(TOY_MODEL / folder / "config.json", TOY_MODEL / folder / "diffusion_pytorch_model.safetensors",
                        target)
    for name in ("tokenizer", "text_encoder", "tokenizer_2", "text_encoder_2"):
        shutil.copytree(TOY_MODEL / name, models_dir / "text_encoders" / TOY_TEXT_ENCODERS / name, dirs_exist_ok=True)
    shutil.copyfile(TOY_MODEL / "preview.json", models_dir / "vae" / TOY_PREVIEW)
    write_toy_inputs(input_dir)


def toy_scene(workflow: str):
    """The toy-world scene whose image or clip ``workflow`` gets as input (:data:`TOY_SCENE_SEEDS`)."""
    from pyramid_core.toy import checks

    scene = checks.scene_for(TOY_SCENE_SEEDS[workflow])
    case = (scene.color, scene.shape, scene.direction, scene.background)
    if case != TOY_CASES[workflow]:
        raise ValueError(f"TOY_CASES[{workflow!r}] must be the case of its scene (TOY_SCENE_SEEDS): {case}")
    return scene


def read_saved(path: Path):
    """uint8 (T, H, W, 3) numpy frames of a video (or a png: one frame) that a workflow saved."""
    import numpy as np
    from PIL import Image

    from pyramid_core.video_io import read_video

    if Path(path).suffix == ".png":
        with Image.open(path) as image:
            return np.asarray(image.convert("RGB"))[None]
    return read_video(path)[0].numpy()


def judge_toy_output(workflow: str, frames):
    """Does ``frames`` (uint8 (T, H, W, 3)), what ``workflow`` saved on the toy model, show its
    case of :data:`TOY_CASES`? By the library's checks (:mod:`pyramid_core.toy.checks`):
    text-to-video (the prompted colour and shape moving the prompted way), image-to-video from
    its scene's first frame, continuation of its scene's clip, and for one image (text-to-image)
    the prompted colour and shape. Returns a ``judge.Verdict``."""
    from pyramid_core.toy import checks, judge, world

    color, want_shape, direction, _ = TOY_CASES[workflow]
    if workflow.endswith("i2v_384p"):
        scene = toy_scene(workflow)
        return checks.judge_image_to_video(frames, world.render(scene, frames=1)[0], scene)
    if workflow.endswith("continue_384p"):
        return checks.judge_continuation(frames, toy_scene(workflow))
    if len(frames) == 1:                                         # text-to-image: colour and shape
        reading = judge.read_video(frames)
        reasons = [f"{what} is {got}, asked {want}" for what, got, want in
                   (("colour", reading.color, color), ("shape", reading.shapes[0], want_shape)) if got != want]
        return judge.Verdict(not reasons, reasons, {"color": reading.color, "shape": reading.shapes[0]})
    return checks.judge_text_to_video(frames, color, want_shape, direction)


def toy_quality() -> dict:
    """The toy model's success rates by check (``t2v``, ``i2v``, ``continue``, ...), as
    ``benchmarks/toy_quality.py --write-quality`` wrote them; {} when it did not."""
    from pyramid_core.toy.model import QUALITY_FILE

    file = TOY_MODEL / QUALITY_FILE
    return json.loads(file.read_text()) if file.is_file() else {}


def write_toy_inputs(folder: Path) -> None:
    """``example.png``: frame 0 of the image-to-video workflow's scene; ``clip.mp4``: the
    continuation workflow's scene, all 17 frames (the workflow keeps the first 9)."""
    from PIL import Image

    from pyramid_core.toy import world
    from pyramid_core.training.synthetic import write_video

    Image.fromarray(world.render(toy_scene("pyramid_flow_i2v_384p"), frames=1)[0]).save(Path(folder) / "example.png")
    write_video(Path(folder) / "clip.mp4", world.render(toy_scene("pyramid_flow_continue_384p")), world.FPS)


def write_inputs(folder: Path) -> None:
    """``example.png`` (image-to-video) and ``clip.mp4`` (continuation) for the workflows."""
    from PIL import Image

    generator = torch.Generator().manual_seed(0)
    pixels = (torch.rand(HEIGHT * 2, WIDTH * 2, 3, generator=generator) * 255).to(torch.uint8).numpy()
    Image.fromarray(pixels).save(folder / "example.png")
    import av

    with av.open(str(folder / "clip.mp4"), mode="w") as container:
        stream = container.add_stream("libx264", rate=24)
        stream.width, stream.height, stream.pix_fmt = WIDTH * 2, HEIGHT * 2, "yuv420p"
        for index in range(20):
            frame = (torch.rand(HEIGHT * 2, WIDTH * 2, 3, generator=generator) * 255).to(torch.uint8).numpy()
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def load_api_workflow(name: str) -> dict:
    return json.loads((WORKFLOWS / f"{name}.json").read_text())


def load_ui_workflow(name: str) -> dict:
    return json.loads((WORKFLOWS.parent / f"{name}.json").read_text())


def _stand_in_edits(prompt: dict, seed: int) -> dict[str, tuple[str | None, dict]]:
    """``{node id: (new class_type or None, {input: value})}``: what makes a shipped workflow run
    on the stand-ins, quickly: the tiny text encoders, fp32 models, 128x64 px, 9 frames (a
    continuation: a 9-frame clip continued to 17; an image: 1), 1-2 steps. Read from the API-format twin;
    applied to it by :func:`shrink` and to the UI-format file by :func:`shrink_ui`."""
    continuation = any(node["class_type"] == "ImageFromBatch" for node in prompt.values())
    edits: dict[str, tuple[str | None, dict]] = {}
    for node_id, node in prompt.items():
        inputs, kind = node["inputs"], node["class_type"]
        if kind == "DualCLIPLoader":     # t5xxl + clip_l cannot be tiny: the official-folder loader instead
            edits[node_id] = ("PyramidFlowTextEncoderLoader", {"folder": TINY_TEXT_ENCODERS, "precision": "fp32",
                                                                "device": "default"})
        elif kind in ("PyramidFlowDiTLoader", "PyramidFlowVAELoader"):
            edits[node_id] = (None, {"precision": "fp32"})
        elif kind == "PyramidFlowEmptyLatent":       # an image stays one frame
            length = 1 if inputs["length"] == 1 else 2 * FRAMES - 1 if continuation else FRAMES
            edits[node_id] = (None, dict(width=WIDTH, height=HEIGHT, length=length))
        elif kind == "ImageScale":
            edits[node_id] = (None, dict(width=WIDTH, height=HEIGHT))
        elif kind == "ImageFromBatch":
            edits[node_id] = (None, {"length": FRAMES})
        elif kind == "PyramidFlowSampler":
            steps = {k: 2 if k.startswith("first_frame") else 1 for k in inputs if "steps_stage" in k}
            edits[node_id] = (None, {**steps, "seed": seed})
        elif kind == "PyramidFlowStageSampler":
            edits[node_id] = (None, dict(steps=2, seed=seed))
        elif kind == "PyramidFlowUnitSampler":
            edits[node_id] = (None, dict(steps_stage1=1, steps_stage2=1, steps_stage3=1, seed=seed))
    return edits


def _toy_edits(prompt: dict, workflow: str, seed: int) -> dict[str, tuple[str | None, dict]]:
    """Like :func:`_stand_in_edits`, for the toy model: its text encoders, fp32, the toy world's
    size and length (a continuation: its 9-frame clip continued to 17; an image: 1 frame), the
    prompt of ``workflow``'s case (:data:`TOY_CASES`) with the empty negative prompt the toy DiT
    was trained with, TOY_STEPS steps per stage and the guidance of :class:`ToySettings` (the
    first frame's, the video units'), and the toy VAE's preview colours."""
    from pyramid_core.toy import world
    from pyramid_core.toy.model import ToySettings

    guidance, video_guidance = ToySettings.guidance, ToySettings.video_guidance

    caption = world.caption(*TOY_CASES[workflow])
    edits: dict[str, tuple[str | None, dict]] = {}
    for node_id, node in prompt.items():
        inputs, kind = node["inputs"], node["class_type"]
        if kind == "DualCLIPLoader":
            edits[node_id] = ("PyramidFlowTextEncoderLoader", {"folder": TOY_TEXT_ENCODERS, "precision": "fp32",
                                                                "device": "default"})
        elif kind == "PyramidFlowDiTLoader":
            edits[node_id] = (None, {"precision": "fp32", "preview": TOY_PREVIEW})
        elif kind == "PyramidFlowVAELoader":
            edits[node_id] = (None, {"precision": "fp32"})
        elif kind == "PyramidFlowTextEncode":
            edits[node_id] = (None, {"prompt": caption, "negative_prompt": ""})
        elif kind == "PyramidFlowEmptyLatent":
            length = 1 if inputs["length"] == 1 else TOY_FRAMES
            edits[node_id] = (None, dict(width=TOY_SIZE, height=TOY_SIZE, length=length))
        elif kind == "ImageScale":
            edits[node_id] = (None, dict(width=TOY_SIZE, height=TOY_SIZE))
        elif kind == "ImageFromBatch":
            edits[node_id] = (None, {"length": TOY_CONTEXT_FRAMES})
        elif kind == "PyramidFlowSampler":
            steps = {k: TOY_STEPS for k in inputs if "steps_stage" in k}
            edits[node_id] = (None, {**steps, "guidance_scale": guidance, "video_guidance_scale": video_guidance,
                                     "seed": seed})
        elif kind == "PyramidFlowStageSampler":
            edits[node_id] = (None, dict(steps=TOY_STEPS, guidance_scale=guidance, seed=seed))   # the first frame
        elif kind == "PyramidFlowUnitSampler":
            edits[node_id] = (None, dict(steps_stage1=TOY_STEPS, steps_stage2=TOY_STEPS, steps_stage3=TOY_STEPS,
                                         guidance_scale=video_guidance if "history" in inputs else guidance,
                                         seed=seed))      # a unit after others, or the first frame
    return edits


def _edits(prompt: dict, seed: int, toy: str | None) -> dict[str, tuple[str | None, dict]]:
    return _toy_edits(prompt, toy, seed) if toy else _stand_in_edits(prompt, seed)


def shrink(prompt: dict, seed: int = 7, toy: str | None = None) -> dict:
    """The API-format workflow with the tiny text encoders, fp32 models, 128x64 px, 9 frames and
    1-2 steps; or, with ``toy`` (the workflow's name), made to run on the toy model (:func:`_toy_edits`)."""
    prompt = copy.deepcopy(prompt)
    for node_id, (kind, values) in _edits(prompt, seed, toy).items():
        if kind is not None:
            prompt[node_id] = {"class_type": kind, "inputs": dict(values)}
        else:
            prompt[node_id]["inputs"].update(values)
    for node in prompt.values():            # text encode: clip -> text_encoder (the loader's output)
        inputs = node["inputs"]
        if node["class_type"] == "PyramidFlowTextEncode" and "clip" in inputs:
            inputs["text_encoder"] = inputs.pop("clip")
    return prompt


def shrink_ui(name: str, object_info: dict, seed: int = 7, toy: bool = False) -> dict:
    """:func:`shrink` for the UI-format file of the shipped workflow ``name`` (what the page opens).

    ``object_info`` is the server's ``/object_info`` (input order, and which widgets carry a
    control value). The UI file and its API twin share node ids, so the edits read from the
    twin apply to both; what the page queues from the result is ``shrink`` of the twin.
    """
    workflow = load_ui_workflow(name)
    for node_id, (kind, values) in _edits(load_api_workflow(name), seed, name if toy else None).items():
        if kind is not None:
            replace_node(workflow, int(node_id), kind, object_info, retarget={"CLIP": "text_encoder"})
        set_widget_values(workflow, int(node_id), values, object_info)
    return workflow


def video_length(prompt: dict) -> int:
    return next(n["inputs"]["length"] for n in prompt.values() if n["class_type"] == "PyramidFlowEmptyLatent")

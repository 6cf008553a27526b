"""Which published files each Pyramid Flow variant needs, and where they go.

Two layouts:

* ``single``: the single files ComfyUI users keep (the DiT and VAE repackaged by the older
  ComfyUI wrapper's author, ComfyUI's own T5-XXL and CLIP-L), each in its ComfyUI model
  folder. The 1024p image model and the SD3 models exist only as official folders; for them
  the folder is placed where the loaders list folders (``diffusion_models/<repo>/...``).
* ``official``: the release's own folders (``diffusion_transformer_384p/``,
  ``causal_video_vae/``, ``text_encoder*/``, ``tokenizer*/``), as ``--model-dir`` and the
  Text Encoder Loader take them.

A :class:`HubFile` names one file (or folder, ``path`` ending in ``/``) of a Hugging Face
repository. ``revision`` pins a commit where one is known; otherwise the download resolves
the repository's ``main`` once and takes every file from that commit. ``sha256`` is the
published checksum where one is known; every file is also checked against the checksum the
Hub publishes for it at download time (:mod:`.download`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import PurePosixPath

from ..variants import VARIANTS, get_variant

HUB = "https://huggingface.co"
MINIFLUX_REPO = "rain1011/pyramid-flow-miniflux"
SD3_REPO = "rain1011/pyramid-flow-sd3"
SINGLE_FILES_REPO = "Kijai/pyramid-flow-comfy"          # the older ComfyUI wrapper's repackaged files
TEXT_ENCODERS_REPO = "comfyanonymous/flux_text_encoders"  # ComfyUI's own t5xxl + clip_l
# The commit of flux_text_encoders whose files carry the checksums below (the files have
# not changed since it).
TEXT_ENCODERS_REVISION = "6af2a98e3f615bdfa612fbd85da93d1ed5f69ef5"

LAYOUTS = ("single", "official")
COMFYUI_FOLDERS = ("diffusion_models", "vae", "text_encoders")


@dataclass(frozen=True)
class HubFile:
    """One published file (or folder: ``path`` ends with ``/``) and its place in ComfyUI.

    ``directory`` is the ComfyUI model folder it belongs in and ``name`` its name there (for
    a folder: the path the loaders list, such as ``pyramid-flow-miniflux/diffusion_transformer_image``).
    ``kind``: ``"dit"``, ``"vae"`` or ``"text_encoder"``; ``size`` in bytes where known (the
    download reads the Hub's). ``sha256``: the published checksum, where known.
    """

    repo: str
    path: str
    directory: str
    kind: str
    name: str = ""
    revision: str | None = None
    sha256: str | None = None
    size: int | None = None

    def __post_init__(self):
        if not self.name:
            object.__setattr__(self, "name", PurePosixPath(self.path).name)

    @property
    def is_folder(self) -> bool:
        return self.path.endswith("/")

    @property
    def url(self) -> str:
        """The ``resolve`` URL of a file (the repository's tree for a folder)."""
        if self.is_folder:
            return f"{HUB}/{self.repo}/tree/{self.revision or 'main'}/{self.path.rstrip('/')}"
        return f"{HUB}/{self.repo}/resolve/{self.revision or 'main'}/{self.path}"

    def model_entry(self) -> dict:
        """The ``{name, url, directory}`` entry (plus ``hash``/``hash_type`` where published)
        that ComfyUI's missing-models dialog reads from a workflow."""
        entry = {"name": self.name, "url": self.url, "directory": self.directory}
        if self.sha256:
            entry.update(hash=self.sha256, hash_type="SHA256")
        return entry


def _single(path: str, directory: str, kind: str, **known) -> HubFile:
    return HubFile(SINGLE_FILES_REPO, path, directory, kind, **known)


def _text(path: str, sha256: str, size: int) -> HubFile:
    return HubFile(TEXT_ENCODERS_REPO, path, "text_encoders", "text_encoder",
                   revision=TEXT_ENCODERS_REVISION, sha256=sha256, size=size)


# The single files, by what they are.
DIT_FILES = {
    ("miniflux-384p", "bf16"): _single("pyramid_flow_miniflux_bf16_v2.safetensors", "diffusion_models", "dit"),
    ("miniflux-384p", "fp8"): _single("pyramid_flow_miniflux_fp8_e4m3fn_v2.safetensors", "diffusion_models", "dit"),
    ("miniflux-768p", "bf16"): _single("pyramid_flow_miniflux_768_bf16.safetensors", "diffusion_models", "dit"),
    ("miniflux-768p", "fp8"): _single("pyramid_flow_miniflux_768_fp8_e4m3fn.safetensors", "diffusion_models", "dit"),
}
VAE_FILE = _single("pyramid_flow_vae_bf16.safetensors", "vae", "vae")
T5_FILES = {
    "bf16": _text("t5xxl_fp16.safetensors", "6e480b09fae049a72d2a8c5fbccb8d3e92febeb233bbe9dfe7256958a9167635",
                  9_787_841_024),
    "fp8": _text("t5xxl_fp8_e4m3fn.safetensors", "7d330da4816157540d6bb7838bf63a0f02f573fc48ca4d8de34bb0cbfd514f09",
                 4_893_934_904),
}
CLIP_L_FILE = _text("clip_l.safetensors", "660c6f5b1abae9dc498ac2d21e1347d2abdb0cf6c0c0c8576cd796491d9a6cdd",
                    246_144_152)

TEXT_ENCODER_FOLDERS = {"flux": ("text_encoder", "text_encoder_2", "tokenizer", "tokenizer_2"),
                        "mmdit": ("text_encoder", "text_encoder_2", "text_encoder_3",
                                  "tokenizer", "tokenizer_2", "tokenizer_3")}


def release_repo(variant: str) -> str:
    """The official repository of a variant."""
    return MINIFLUX_REPO if get_variant(variant).family == "flux" else SD3_REPO


def _release_folder(variant: str, folder: str, directory: str, kind: str) -> HubFile:
    """An official folder of the variant's release, placed in ComfyUI as ``<repo name>/<folder>``."""
    repo = release_repo(variant)
    return HubFile(repo, folder + "/", directory, kind, name=f"{repo.split('/')[1]}/{folder}")


def official_files(variant: str) -> list[HubFile]:
    """The release folders a variant needs: its DiT, the VAE and the text encoders."""
    chosen = get_variant(variant)
    files = [_release_folder(variant, chosen.folder, "diffusion_models", "dit"),
             _release_folder(variant, "causal_video_vae", "vae", "vae")]
    files += [_release_folder(variant, folder, "diffusion_models", "text_encoder")
              for folder in TEXT_ENCODER_FOLDERS[chosen.family]]
    return files


def single_files(variant: str, fp8: bool = False) -> list[HubFile]:
    """What a variant needs in ComfyUI's single-file form; official folders where none exists
    (the 1024p image model; the SD3 models, whose VAE and three text encoders come from
    their release too)."""
    chosen = get_variant(variant)
    if chosen.family != "flux":
        return official_files(variant)
    precision = "fp8" if fp8 else "bf16"
    dit = DIT_FILES.get((variant, precision)) or _release_folder(variant, chosen.folder, "diffusion_models", "dit")
    return [dit, VAE_FILE, T5_FILES[precision], CLIP_L_FILE]


def files_for(variant: str, layout: str = "single", fp8: bool = False) -> list[HubFile]:
    """The files of ``variant`` in ``layout`` (``single`` or ``official``); ``fp8``: the fp8
    DiT and T5 files where they exist (single layout only)."""
    if layout not in LAYOUTS:
        raise ValueError(f"unknown layout {layout!r}; choose one of {', '.join(LAYOUTS)}")
    get_variant(variant)            # an unknown variant is refused with the list of known ones
    return single_files(variant, fp8) if layout == "single" else official_files(variant)


def known_files() -> dict[str, tuple[HubFile, str]]:
    """Every file or folder name a workflow may use -> (the file, the variant that needs it)."""
    found: dict[str, tuple[HubFile, str]] = {}
    for variant in VARIANTS:
        for fp8 in (False, True):
            for file in files_for(variant, "single", fp8):
                found.setdefault(file.name, (file, variant))
    return found


def where_to_get(directory: str, name: str) -> str | None:
    """A sentence for a loader that misses ``name`` in ``models/<directory>``: its URL and the
    download command; ``None`` for a name this pack does not know."""
    known = known_files().get(name)
    if known is None or known[0].directory != directory:
        return None
    file, variant = known
    what = "the official folder" if file.is_folder else "it"
    return (f"download {what} from {file.url} into models/{directory}/, or run "
            f"'python -m pyramid_core download {variant} --comfyui <your ComfyUI folder>'")

"""Prompt encoding with tiny CLIP/T5 models and tokenizers built here (no downloads)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

transformers = pytest.importorskip("transformers")
tokenizers = pytest.importorskip("tokenizers")

from pyramid_core.models.text_encoders import (  # noqa: E402
    TEXT_ENCODER_LAYOUTS,
    PyramidTextEncoder,
    detect_text_encoder_family,
)

WORDS = "a an the cat dog runs jumps over red blue sky sea movie trailer tiny test prompt , . ! space man".split()
CLIP_SPECIALS = ["<|startoftext|>", "<|endoftext|>", "<pad>", "<unk>"]
T5_SPECIALS = ["<pad>", "</s>", "<unk>"]
T5_LENGTH = 128


def _word_tokenizer(specials: list[str], template: str, **special_tokens):
    """A whitespace word-level tokenizer wrapped as a transformers fast tokenizer."""
    vocab = {token: i for i, token in enumerate(specials + WORDS)}
    core = tokenizers.Tokenizer(tokenizers.models.WordLevel(vocab, unk_token=special_tokens["unk_token"]))
    core.pre_tokenizer = tokenizers.pre_tokenizers.WhitespaceSplit()
    core.post_processor = tokenizers.processors.TemplateProcessing(
        single=template, special_tokens=[(t, vocab[t]) for t in specials if t in template],
    )
    return transformers.PreTrainedTokenizerFast(tokenizer_object=core, **special_tokens), vocab


def _clip_pair(hidden: int, projection: int | None):
    tokenizer, vocab = _word_tokenizer(
        CLIP_SPECIALS, "<|startoftext|> $A <|endoftext|>", bos_token="<|startoftext|>",
        eos_token="<|endoftext|>", pad_token="<pad>", unk_token="<unk>", model_max_length=77)
    config = transformers.CLIPTextConfig(
        vocab_size=len(vocab), hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=1,
        num_attention_heads=2, max_position_embeddings=16, projection_dim=projection or hidden,
        bos_token_id=vocab["<|startoftext|>"], eos_token_id=vocab["<|endoftext|>"], pad_token_id=vocab["<pad>"],
    )
    model_class = transformers.CLIPTextModelWithProjection if projection else transformers.CLIPTextModel
    return tokenizer, model_class(config).eval()


def _t5_pair(d_model: int = 24):
    tokenizer, vocab = _word_tokenizer(
        T5_SPECIALS, "$A </s>", eos_token="</s>", pad_token="<pad>", unk_token="<unk>", model_max_length=512)
    config = transformers.T5Config(
        vocab_size=len(vocab), d_model=d_model, d_ff=32, d_kv=8, num_heads=2, num_layers=1,
        feed_forward_proj="gated-gelu", relative_attention_num_buckets=8, pad_token_id=0, eos_token_id=1,
        decoder_start_token_id=0,
    )
    return tokenizer, transformers.T5EncoderModel(config).eval()


def _write_folder(root: Path, family: str, pairs) -> Path:
    layout = TEXT_ENCODER_LAYOUTS[family]
    for (tok_dir, enc_dir), (tokenizer, model) in zip((*layout.clips, layout.t5), pairs):
        tokenizer.save_pretrained(root / tok_dir)
        model.save_pretrained(root / enc_dir)
    return root


@pytest.fixture(scope="module")
def flux_folder(tmp_path_factory):
    torch.manual_seed(0)
    pairs = [_clip_pair(16, None), _t5_pair()]
    return _write_folder(tmp_path_factory.mktemp("flux"), "flux", pairs), pairs


@pytest.fixture(scope="module")
def mmdit_folder(tmp_path_factory):
    torch.manual_seed(1)
    pairs = [_clip_pair(16, 12), _clip_pair(20, 20), _t5_pair()]
    return _write_folder(tmp_path_factory.mktemp("mmdit"), "mmdit", pairs), pairs


@pytest.fixture(scope="module")
def flux_encoder(flux_folder):
    return PyramidTextEncoder.from_pretrained(flux_folder[0], dtype=torch.float32)


PROMPTS = ["a cat runs", "the red space man jumps over a blue sea , movie trailer"]


def _expected_t5(tokenizer, model, prompts):
    ids = [tokenizer(p).input_ids for p in prompts]                     # words + </s>
    input_ids = torch.zeros(len(prompts), T5_LENGTH, dtype=torch.int64)
    mask = torch.zeros(len(prompts), T5_LENGTH, dtype=torch.int64)
    for row, seq in enumerate(ids):
        input_ids[row, :len(seq)] = torch.tensor(seq)
        mask[row, :len(seq)] = 1
    with torch.no_grad():
        return model(input_ids, attention_mask=mask).last_hidden_state, mask


def _expected_clip_pooled(tokenizer, model, prompts):
    rows = []
    for prompt in prompts:
        ids = tokenizer(prompt).input_ids
        padded = torch.tensor([ids + [tokenizer.pad_token_id] * (16 - len(ids))])
        with torch.no_grad():
            hidden = model(padded).last_hidden_state                         # after final layer norm
        eos_hidden = hidden[0, len(ids) - 1]                                 # EOS token
        if isinstance(model, transformers.CLIPTextModelWithProjection):
            eos_hidden = model.text_projection(eos_hidden)
        rows.append(eos_hidden)
    return torch.stack(rows)


def test_flux_layout_encodes_like_the_reference(flux_folder):
    folder, ((clip_tok, clip), (t5_tok, t5)) = flux_folder
    assert detect_text_encoder_family(folder) == "flux"
    encoder = PyramidTextEncoder.from_pretrained(folder, dtype=torch.float32)
    embeds, mask, pooled = encoder.encode_prompt(PROMPTS)

    assert embeds.shape == (2, T5_LENGTH, 24) and embeds.dtype == torch.float32
    assert mask.shape == (2, T5_LENGTH) and mask.dtype == torch.int64
    assert mask.sum(1).tolist() == [len(p.split()) + 1 for p in PROMPTS]     # words + EOS
    assert pooled.shape == (2, 16)                                            # CLIP width, no projection

    expected_embeds, expected_mask = _expected_t5(t5_tok, t5, PROMPTS)
    assert torch.equal(mask, expected_mask)
    torch.testing.assert_close(embeds, expected_embeds, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(pooled, _expected_clip_pooled(clip_tok, clip, PROMPTS), atol=1e-5, rtol=1e-5)


def test_mmdit_layout_concatenates_both_projected_clips(mmdit_folder):
    folder, ((tok_l, clip_l), (tok_g, clip_g), _) = mmdit_folder
    assert detect_text_encoder_family(folder) == "mmdit"
    encoder = PyramidTextEncoder.from_pretrained(folder, dtype=torch.float32)
    embeds, mask, pooled = encoder.encode_prompt(PROMPTS)
    assert embeds.shape == (2, T5_LENGTH, 24) and mask.shape == (2, T5_LENGTH)
    assert pooled.shape == (2, 12 + 20)                                       # projection dims
    expected = torch.cat([_expected_clip_pooled(tok_l, clip_l, PROMPTS),
                          _expected_clip_pooled(tok_g, clip_g, PROMPTS)], dim=-1)
    torch.testing.assert_close(pooled, expected, atol=1e-5, rtol=1e-5)


def test_batching_and_padding_do_not_change_a_prompt(flux_encoder):
    encoder = flux_encoder
    single = encoder.encode_prompt(PROMPTS[0])
    batch = encoder.encode_prompt(PROMPTS)
    for one, many in zip(single, batch):
        torch.testing.assert_close(one[0], many[0], atol=1e-5, rtol=1e-5)


def test_dtype_and_frozen(flux_folder):
    folder, _ = flux_folder
    encoder = PyramidTextEncoder.from_pretrained(folder, dtype=torch.bfloat16)
    embeds, mask, pooled = encoder("a dog")
    assert embeds.dtype == torch.bfloat16 and pooled.dtype == torch.bfloat16 and mask.dtype == torch.int64
    assert not any(p.requires_grad for p in encoder.parameters())
    assert not encoder.training


def test_long_prompts_are_truncated_to_128_tokens(flux_encoder):
    embeds, mask, pooled = flux_encoder.encode_prompt(" ".join(["cat"] * 300))
    assert embeds.shape[1] == T5_LENGTH and mask.sum().item() == T5_LENGTH
    assert torch.isfinite(pooled).all()


def test_missing_or_unknown_folders_are_rejected(tmp_path, flux_folder):
    with pytest.raises(ValueError, match="does not exist"):
        PyramidTextEncoder.from_pretrained(tmp_path / "nope")
    with pytest.raises(ValueError, match="no Pyramid Flow text encoders"):
        detect_text_encoder_family(tmp_path)
    folder, _ = flux_folder
    with pytest.raises(ValueError, match="tokenizer_3/"):
        PyramidTextEncoder.from_pretrained(folder, family="mmdit")
    with pytest.raises(ValueError, match="unknown text encoder family"):
        PyramidTextEncoder.from_pretrained(folder, family="sdxl")


@pytest.mark.parametrize("bad", [[], [1, 2], None])
def test_bad_prompts_are_rejected(flux_encoder, bad):
    with pytest.raises(ValueError, match="string"):
        flux_encoder.encode_prompt(bad)


def test_fp8_weights_halve_the_linears_and_stay_close(flux_folder):
    """fp8 storage for small cards: the Linear weights in fp8, upcast per layer (never fp8
    matmuls: T5's activation outliers), embeddings close to bf16's."""
    from pyramid_core.models.fp8_linear import Fp8Linear

    folder, _ = flux_folder
    full = PyramidTextEncoder.from_pretrained(folder, dtype=torch.bfloat16)
    narrow = PyramidTextEncoder.from_pretrained(folder, dtype=torch.bfloat16, weight_dtype=torch.float8_e4m3fn)
    linears = {name: m for name, m in narrow.named_modules() if isinstance(m, torch.nn.Linear)}
    kept = {name for name in linears if name.endswith(".wo")}          # T5's FF outputs: transformers needs them wide
    assert kept and all(linears[name].weight.dtype == torch.bfloat16 for name in kept)
    assert all(type(m) is Fp8Linear and m.weight.dtype == torch.float8_e4m3fn and m.fp8_matmul is False
               for name, m in linears.items() if name not in kept)
    (embeds, mask, pooled), (ref, ref_mask, ref_pooled) = narrow.encode_prompt(PROMPTS), full.encode_prompt(PROMPTS)
    assert embeds.dtype == torch.bfloat16 and torch.equal(mask, ref_mask)
    for got, want in ((embeds, ref), (pooled, ref_pooled)):
        assert (got.float() - want.float()).norm() / want.float().norm() < 0.1

"""The tiny weights in the layout other tools read: text-encoder keys under ``text_model.`` and tokenizer
folders with vocab.json and merges.txt (as the published SDXL repos have them)."""

import pytest
from safetensors import safe_open

import weights


@pytest.fixture(scope="module")
def base():
    return weights.resolve("sdxl-base")


@pytest.mark.parametrize("component, outside", [("text_encoder", set()), ("text_encoder_2", {"text_projection.weight"})])
def test_text_encoder_keys_are_under_text_model_as_older_transformers_expect(base, component, outside):
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    (f,) = (base / component).glob("*.safetensors")
    with safe_open(f, framework="pt") as st:
        keys = set(st.keys())
    assert {k for k in keys if not k.startswith("text_model.")} == outside
    cls = CLIPTextModel if component == "text_encoder" else CLIPTextModelWithProjection
    _, info = cls.from_pretrained(base / component, variant="fp16", output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]  # transformers 5 reads them all too


@pytest.mark.parametrize("where, folder", [("sdxl-base", "tokenizer"), ("sdxl-base", "tokenizer_2"),
                                           ("sdxl-refiner", "tokenizer_2")])
def test_tokenizer_from_vocab_and_merges_files_equals_the_saved_one(where, folder, tmp_path):
    """A folder with only vocab.json and merges.txt (what slow tokenizers and older tools read) tokenizes
    as the saved tokenizer.json does."""
    import shutil

    from transformers import AutoTokenizer, CLIPTokenizer

    d = weights.resolve(where) / folder
    saved = AutoTokenizer.from_pretrained(d)
    for name in ("vocab.json", "merges.txt"):
        shutil.copy(d / name, tmp_path / name)
    from_files = CLIPTokenizer.from_pretrained(tmp_path, pad_token=saved.pad_token)
    text = ["a photo of an astronaut riding a rainbow unicorn", "TOKYO xyz 123 red dog!"]
    assert from_files(text, padding="max_length", max_length=77).input_ids == \
        saved(text, padding="max_length", max_length=77).input_ids
    assert len(from_files) == len(saved)

"""Inputs: validation names the input, whole-word token substitution, train.py's Cog schema."""

from __future__ import annotations


import pytest
import torch
from transformers import CLIPTokenizer

from training import TrainConfig, TrainingInputError, train_model
from training.data import PreparedDataset
from training.tokens import PivotalTokens, substitute

DOCUMENTED = [  # name, default, choices
    ("input_images", None, None),
    ("seed", None, None),
    ("resolution", 512, None),
    ("train_batch_size", 4, None),
    ("num_train_epochs", 4000, None),
    ("max_train_steps", 1000, None),
    ("is_lora", True, None),
    ("unet_learning_rate", 1e-6, None),
    ("ti_lr", 3e-4, None),
    ("lora_lr", 1e-4, None),
    ("lora_rank", 32, None),
    ("lr_scheduler", "constant", ["constant", "linear"]),
    ("lr_warmup_steps", 100, None),
    ("token_string", "TOK", None),
    ("caption_prefix", "a photo of TOK", None),
    ("mask_target_prompts", None, None),
    ("crop_based_on_salience", True, None),
    ("use_face_detection_instead", False, None),
    ("clipseg_temperature", 1.0, None),
    ("verbose", True, None),
    ("checkpointing_steps", 200, None),
    ("input_images_filetype", "infer", ["zip", "tar", "infer"]),
    # beyond the reference's inputs; the defaults keep its behaviour
    ("snr_gamma", None, None),
    ("noise_offset", 0.0, None),
]


def test_train_py_has_the_documented_inputs():
    from cog._inspector import create_predictor

    info = create_predictor("train", "train")  # cog's own reading of the signature
    assert [(n, i.default) for n, i in info.inputs.items()] == [(n, d) for n, d, _ in DOCUMENTED]
    for name, _, choices in DOCUMENTED:
        assert info.inputs[name].choices == choices, name
        assert info.inputs[name].description, name
    assert list(info.output.fields) == ["weights", "checkpoints", "dataset", "validation_images"]
    # and TrainConfig has the same defaults
    defaults = TrainConfig()
    for name, default, _ in DOCUMENTED[1:]:
        assert getattr(defaults, name) == default, name


@pytest.mark.parametrize(
    "text, expected",
    [
        ("a photo of TOK", "a photo of <s0><s1>"),
        ("TOK, in Tokyo with stock and TOKYO", "<s0><s1>, in Tokyo with stock and TOKYO"),
        ("(TOK) TOK.TOK", "(<s0><s1>) <s0><s1>.<s0><s1>"),
        ("TOKEN aTOK TOK_x", "TOKEN aTOK TOK_x"),
    ],
)
def test_whole_word_substitution(text, expected):
    assert substitute(text, "TOK", "<s0><s1>") == expected


def test_captions_are_substituted(prepared):
    ds = PreparedDataset(prepared, 64, substitute=lambda c: substitute(c, "TOK", "<s0><s1>"))
    assert [e.caption for e in ds.examples] == ["a photo of <s0><s1>, a man 0", "a photo of <s0><s1>, a man 1"]


def test_new_tokens_in_both_tokenizers_and_encoders(base_dir):
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    tokenizers = [CLIPTokenizer.from_pretrained(base_dir, subfolder=s) for s in ("tokenizer", "tokenizer_2")]
    load = dict(variant="fp16", torch_dtype=torch.float32)
    encoders = [CLIPTextModel.from_pretrained(base_dir, subfolder="text_encoder", **load),
                CLIPTextModelWithProjection.from_pretrained(base_dir, subfolder="text_encoder_2", **load)]
    sizes = [len(t) for t in tokenizers]
    tokens = PivotalTokens(tokenizers, encoders, "TOK", 2, generator=torch.Generator().manual_seed(0))
    assert tokens.special_params() == {"TOK": "<s0><s1>"}
    for tok, enc, size, ids in zip(tokenizers, encoders, sizes, tokens.ids):
        assert ids == [size, size + 1]
        assert enc.get_input_embeddings().weight.shape[0] == size + 2
        encoded = tok(tokens.substitute("a photo of TOK"), add_special_tokens=False).input_ids
        assert encoded[-2:] == ids  # "<s0><s1>" is exactly the two new tokens
    assert [r.shape for r in tokens.new_rows().values()] == [(2, 32), (2, 64)]


@pytest.mark.parametrize(
    "overrides, names",
    [
        ({"caption_prefix": "a photo of someone"}, "caption_prefix"),
        ({"caption_prefix": "a photo of TOKyo"}, "caption_prefix"),
        ({"token_string": "zq", "caption_prefix": "a photo of TOK"}, "caption_prefix"),
        ({"token_string": "two words", "caption_prefix": "two words"}, "token_string"),
        ({"resolution": 0}, "resolution"),
        ({"resolution": 100}, "resolution"),
        ({"train_batch_size": 0}, "train_batch_size"),
        ({"lora_rank": -1}, "lora_rank"),
        ({"checkpointing_steps": 0}, "checkpointing_steps"),
        ({"max_train_steps": -1}, "max_train_steps"),
        ({"lr_warmup_steps": -5}, "lr_warmup_steps"),
        ({"lr_scheduler": "cosine"}, "lr_scheduler"),
        ({"input_images_filetype": "rar"}, "input_images_filetype"),
        ({"ti_lr": -1.0}, "ti_lr"),
        ({"clipseg_temperature": 0.0}, "clipseg_temperature"),
        ({"resolution": 8}, "resolution"),
        ({"resolution": 4104}, "resolution"),
        ({"caption_prefix": "a photo of tok"}, "caption_prefix"),
        ({"token_string": "<s1>", "caption_prefix": "a <s1>"}, "token_string"),
        ({"snr_gamma": 0.0}, "snr_gamma"),
        ({"noise_offset": -0.1}, "noise_offset"),
        ({"ti_lr": float("nan")}, "ti_lr"),
    ],
)
def test_bad_inputs_are_refused_before_any_work(overrides, names, tmp_path):
    # the archive does not even exist: the cheap checks come first
    with pytest.raises(TrainingInputError, match=rf"^{names}:"):
        train_model(tmp_path / "missing.zip", TrainConfig(**overrides), output_dir=tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_missing_archive_names_input_images(tmp_path):
    with pytest.raises(TrainingInputError, match=r"^input_images:"):
        train_model(tmp_path / "missing.zip", TrainConfig(), output_dir=tmp_path / "out")


def test_random_seed_when_empty():
    a, b = TrainConfig().with_seed(), TrainConfig().with_seed()
    assert a.seed is not None and a.seed != b.seed  # 1 in 2**32 to collide
    assert TrainConfig(seed=5).with_seed().seed == 5


@pytest.mark.parametrize("overrides, name", [
    ({"resolution": 8}, "resolution"),
    ({"resolution": 4104}, "resolution"),
    ({"caption_prefix": "a photo of tok"}, "caption_prefix"),  # one case rule: the exact spelling
    ({"caption_prefix": "a photo of TOKyo"}, "caption_prefix"),
    ({"token_string": "<s0>", "caption_prefix": "a <s0>"}, "token_string"),
])
def test_trainer_and_preprocess_refuse_the_same_values(overrides, name, tmp_path):
    """The limits live in one table (training.inputs): TrainConfig, train_on_prepared and prepare agree."""
    from preprocess import PreprocessError, prepare

    from training import train_on_prepared

    with pytest.raises(TrainingInputError, match=rf"^{name}:"):
        TrainConfig(**overrides).validate()
    with pytest.raises(TrainingInputError, match=rf"^{name}:"):
        train_on_prepared(tmp_path / "nothing", TrainConfig(**overrides), tmp_path / "out", tmp_path / "work")
    kwargs = {k: v for k, v in overrides.items() if k in ("resolution", "caption_prefix", "token_string")}
    with pytest.raises(PreprocessError, match=rf"^{name} "):
        prepare(tmp_path / "missing.zip", tmp_path / "prepared", **kwargs)


def test_one_whole_word_rule_for_trainer_predictor_and_captioner():
    from preprocess.caption import compose, user_caption
    from sdxl.finetune import substitute_tokens

    text = "TOK and tok, TOKYO, (TOK)."
    assert substitute(text, "TOK", "<s0><s1>") == "<s0><s1> and tok, TOKYO, (<s0><s1>)."
    assert substitute_tokens(text, {"TOK": "<s0><s1>"}) == substitute(text, "TOK", "<s0><s1>")
    assert compose("a photo of TOK", "tok on a tokyo street", "TOK") == "a photo of TOK, TOK on a tokyo street"
    assert user_caption("a photo of TOK", "tok on a street", "TOK") == "a photo of TOK, TOK on a street"
    assert user_caption("a photo of TOK", "TOK on a street", "TOK") == "TOK on a street"


def test_train_py_inputs_read_the_one_table():
    """Every default and choice of train.py's Input()s is a constant of training.inputs (not a copy)."""
    import ast
    from pathlib import Path

    from training import inputs

    tree = ast.parse(Path(__import__("train").__file__).read_text())
    train_fn = next(n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == "train")
    for arg, default in zip(train_fn.args.args[1:], train_fn.args.defaults[1:]):  # input_images has no default
        keywords = {k.arg: k.value for k in default.keywords}
        assert isinstance(keywords["default"], ast.Name), arg.arg
        assert keywords["default"].id == arg.arg.upper() and hasattr(inputs, keywords["default"].id), arg.arg
        if "choices" in keywords:
            assert isinstance(keywords["choices"], ast.Name) and hasattr(inputs, keywords["choices"].id), arg.arg

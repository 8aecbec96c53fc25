"""weights.sources: which values name which source, the operator's folder for paths (containment after
resolving links and ``..``, one refusal for every path outside it), data: URIs, and refused content
leaving nothing in the cache. (Over HTTP through coglet: tests/hostile/test_weights_sources_http.py.)"""

from __future__ import annotations

import ast
import base64
from pathlib import Path

import pytest

from weights.cache import WeightsCache
from weights.errors import WeightsError
from weights.sources import LOCAL_WEIGHTS_DIR_ENV, allowed_path, data_uri_bytes, hf_repo_id, kind_of, local_weights

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("value, kind", [
    ("https://example.com/w.tar", "url"), ("HTTP://example.com/w", "url"), ("data:,abc", "data"),
    ("someone/sdxl-lora", "hf"), ("hf:someone/sdxl-lora", "hf"), ("/etc/passwd", "path"),
    ("../../etc/shadow", "path"), ("./someone/lora", "path"), ("someone/lora.tar", "path"), ("file:///etc/passwd", "path"),
])
def test_each_value_names_one_source(value, kind):
    assert kind_of(value) == kind


def test_a_repo_id_is_told_by_its_text_not_by_the_server_disk(tmp_path, monkeypatch):
    (tmp_path / "someone" / "lora").mkdir(parents=True)
    monkeypatch.chdir(tmp_path)
    assert hf_repo_id("someone/lora") == "someone/lora" and kind_of("someone/lora") == "hf"
    assert kind_of("someone/lora", operator_given=True) == "path"  # the operator's own relative path


@pytest.fixture
def allowed(tmp_path, monkeypatch) -> Path:
    root = tmp_path / "allowed"
    (root / "sub").mkdir(parents=True)
    (root / "sub" / "w.safetensors").write_bytes(b"x")
    (tmp_path / "outside.tar").write_bytes(b"secret")
    (root / "link-out").symlink_to(tmp_path / "outside.tar")
    (root / "folder-with-link").mkdir()
    (root / "folder-with-link" / "lora.safetensors").symlink_to(tmp_path / "outside.tar")
    monkeypatch.setenv(LOCAL_WEIGHTS_DIR_ENV, str(root))
    return root


def test_paths_inside_the_operators_folder_are_accepted_after_resolving(allowed):
    assert allowed_path(str(allowed / "sub" / "w.safetensors"), "replicate_weights") == allowed / "sub" / "w.safetensors"
    assert allowed_path("sub/w.safetensors", "replicate_weights") == allowed / "sub" / "w.safetensors"
    assert allowed_path("sub/../sub/w.safetensors", "replicate_weights") == allowed / "sub" / "w.safetensors"
    assert allowed_path("sub", "replicate_weights") == allowed / "sub"


def test_every_path_outside_gets_one_refusal_that_tells_nothing(allowed, tmp_path):
    values = [str(tmp_path / "outside.tar"), "../outside.tar", "link-out", "folder-with-link", "missing.tar",
              str(tmp_path), "/etc", "/etc/passwd", "sub/../../outside.tar"]
    messages = set()
    for value in values:
        with pytest.raises(WeightsError) as err:
            allowed_path(value, "replicate_weights")
        assert err.value.input_name == "replicate_weights"
        assert "secret" not in str(err.value)
        messages.add(str(err.value).replace(repr(value), "<value>"))
    assert messages == {"replicate_weights: <value> is not an http(s) URL, a data: URI or a Hugging Face repo id "
                        "(owner/name), nor a file or folder inside the folder this server allows for weights "
                        f"({LOCAL_WEIGHTS_DIR_ENV})"}


def test_without_the_operators_folder_no_path_is_accepted(allowed, monkeypatch):
    monkeypatch.delenv(LOCAL_WEIGHTS_DIR_ENV)
    with pytest.raises(WeightsError, match="paths on the server are not accepted"):
        allowed_path(str(allowed / "sub" / "w.safetensors"), "replicate_weights")


def test_data_uris_base64_and_percent_encoded_with_a_ceiling():
    assert data_uri_bytes("data:application/x-tar;base64," + base64.b64encode(b"abc").decode(), "w", 10) == b"abc"
    assert data_uri_bytes("data:,a%20b", "w", 10) == b"a b"
    with pytest.raises(WeightsError, match="^w: the data: URI holds 11 bytes, over the limit of 10 bytes"):
        data_uri_bytes("data:," + "x" * 11, "w", 10)
    with pytest.raises(WeightsError, match="not valid base64"):
        data_uri_bytes("data:;base64,@@@", "w", 10)
    with pytest.raises(WeightsError, match="needs a comma"):
        data_uri_bytes("data:abc", "w", 10)


def test_content_refused_inside_the_block_is_dropped_from_the_cache_and_good_content_stays(tmp_path):
    cache = WeightsCache(tmp_path / "cache")
    with pytest.raises(ValueError, match="refused"):
        with local_weights("data:,not-weights", cache, input_name="replicate_weights") as path:
            assert path.read_bytes() == b"not-weights"
            raise ValueError("refused")
    assert list(cache.root.iterdir()) == []
    with local_weights("data:,fine", cache, input_name="replicate_weights") as path:
        kept = path
    assert kept.read_bytes() == b"fine" and kept.stat().st_mode & 0o777 == 0o600
    assert cache.root.stat().st_mode & 0o777 == 0o700


def test_sdxl_reads_weights_without_an_import_cycle():
    """lora_formats classifies files; it imports neither trained_weights nor any weights source."""
    tree = ast.parse((REPO / "sdxl" / "lora_formats.py").read_text())
    imported = {n.module or "" for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
    imported |= {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    assert not any("trained_weights" in m or m.startswith("weights") or "huggingface" in m for m in imported), imported

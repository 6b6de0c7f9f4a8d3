"""The model shipped inside the package: offline, small, and it knows the movie domain."""
import json

import deniro_rt
from deniro_rt.artifact import load_manifest, verify_file
from deniro_rt.models import DEFAULT_MODEL_DIR

MOVIE_WORDS = {"movie", "film", "show", "documentary", "series", "story", "one", "flick"}


def test_shipped_model_is_complete_and_small():
    manifest = load_manifest(DEFAULT_MODEL_DIR)
    total = 0
    for name in manifest.files:
        total += verify_file(manifest, name).stat().st_size
    assert total <= 15 * 2**20, f"shipped artifact is {total / 2**20:.1f} MiB"
    assert set(manifest.graphs) == {"fp32", "int8"}
    card = json.loads((DEFAULT_MODEL_DIR / "deniro.json").read_text())
    assert card["validation"]["int8"] and card["fused_ops"]["fp32"].get("Attention", 0) >= 1


def test_model_card_prompt_gets_movie_words():
    for precision in ("fp32", "int8"):
        [result] = deniro_rt.fill(["This is a great [MASK]!"], precision=precision, device="cpu")
        words = [p["token_str"] for p in result]
        assert len(words) == 5 and MOVIE_WORDS & set(words[:2]), (precision, words)

"""The exported artifact folder: what `python -m export` writes and what the runtime loads.

Layout of an artifact folder (all written by export/, read here without torch):

    deniro.json            manifest (below)
    model.onnx             optional full graph, Optimum layout:
                             input_ids int64 [batch, seq], attention_mask int64 [batch, seq]
                             -> logits float32 [batch, seq, vocab]
    fast.onnx              fast graph, fp32; fast_fp16.onnx / fast_int8.onnx: other precisions
                             inputs:  input_ids      int64 [batch, seq]
                                      attention_mask int64 [batch, seq]
                                      mask_index     int64 [n]      flat index b * seq + t of each mask
                                      target_ids     int64 [n, t]   ids whose log-prob is wanted per mask
                                      top_k          int64 [1]      k of the in-graph top-k
                             outputs: topk_logprobs   float32 [n, k]  log-softmax over the whole vocab
                                      topk_ids        int64   [n, k]
                                      target_logprobs float32 [n, t]
    config.json            the transformers model config (Optimum needs it next to model.onnx)
    tokenizer.json, tokenizer_config.json, special_tokens_map.json

Manifest keys (deniro.json): format ("deniro-onnx"), format_version, graphs {precision: file},
full_graph (file or null), files {file: sha256}, vocab_size, max_positions, mask_token,
mask_token_id, pad_token_id, top_k_max (null: any k), opset, fused_ops {precision: {op: count}},
validation {precision: {...}}, source {model, sha256}, export_config {...}, versions {...}.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

from .errors import ArtifactError

FORMAT = "deniro-onnx"
FORMAT_VERSION = 1
MANIFEST = "deniro.json"
FULL_GRAPH = "model.onnx"
FAST_GRAPHS = {"fp32": "fast.onnx", "fp16": "fast_fp16.onnx", "int8": "fast_int8.onnx"}
FAST_INPUTS = ("input_ids", "attention_mask", "mask_index", "target_ids", "top_k")
FAST_OUTPUTS = ("topk_logprobs", "topk_ids", "target_logprobs")
TOKENIZER_FILE = "tokenizer.json"
TOKENIZER_CONFIG = "tokenizer_config.json"
# transformers' clean_up_tokenization, applied by its decode() to the whole string when the tokenizer's config
# sets clean_up_tokenization_spaces: unlike the WordPiece decoder's own cleanup (token by token), it joins
# across tokens ("it ' s" -> "it's").
SPACE_CLEANUPS = (
    (" .", "."),
    (" ?", "?"),
    (" !", "!"),
    (" ,", ","),
    (" ' ", "'"),
    (" n't", "n't"),
    (" 'm", "'m"),
    (" 's", "'s"),
    (" 've", "'ve"),
    (" 're", "'re"),
)


@dataclass(frozen=True)
class Manifest:
    folder: Path
    graphs: dict[str, str]  # precision -> fast graph file
    files: dict[str, str]  # file -> sha256
    vocab_size: int
    max_positions: int
    mask_token: str
    mask_token_id: int
    pad_token_id: int
    raw: dict = field(repr=False)

    def graph_path(self, precision: str) -> Path:
        return self.folder / self.graphs[precision]

    def passed(self, key: str) -> bool:
        """Whether the export's validation record `key` (a graph's precision, or "bf16") passed its thresholds."""
        record = self.raw.get("validation", {}).get(key) or {}
        return record.get("passed") is True


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def load_manifest(folder: str | Path) -> Manifest:
    """Read and check deniro.json; raises ArtifactError naming the problem and the fix."""
    if not str(folder).strip():  # Path("") is the working directory: never what an empty setting meant
        raise ArtifactError("model is an empty path; pass an export folder, or none for the shipped model")
    folder = Path(folder)
    path = folder / MANIFEST
    if not folder.is_dir():
        what = "is a file, not a model folder" if folder.is_file() else "model folder not found:"
        where = f"{folder} {what}" if folder.is_file() else f"{what} {folder}"
        raise ArtifactError(f"{where} (pass an export folder made by `python -m export --onnx --output DIR`)")
    if not path.is_file():
        raise ArtifactError(
            f"{folder} has no {MANIFEST}: it is not a deniro export; run "
            f"`python -m export --onnx --model {folder} --output DIR` and pass DIR"
        )
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ArtifactError(f"{path} is not valid JSON ({exc}); re-run the export") from exc
    if not isinstance(raw, dict):
        raise ArtifactError(f"{path} holds a JSON {type(raw).__name__}, not a manifest object; re-run the export")
    _check_format(raw, path)
    try:
        return Manifest(
            folder=folder,
            graphs=dict(raw["graphs"]),
            files=dict(raw["files"]),
            vocab_size=int(raw["vocab_size"]),
            max_positions=int(raw["max_positions"]),
            mask_token=raw["mask_token"],
            mask_token_id=int(raw["mask_token_id"]),
            pad_token_id=int(raw["pad_token_id"]),
            raw=raw,
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise ArtifactError(f"{path} lacks or mangles the field {exc}; re-run the export") from exc


def _check_format(raw: dict, path: Path) -> None:
    if raw.get("format") != FORMAT:
        raise ArtifactError(f"{path} is not a {FORMAT} manifest (format={raw.get('format')!r})")
    version = raw.get("format_version")
    if version != FORMAT_VERSION:
        raise ArtifactError(
            f"{path} has format_version {version}, this deniro_rt reads "
            f"{FORMAT_VERSION}; re-export with this version or upgrade deniro"
        )


def verify_file(manifest: Manifest, name: str) -> Path:
    """The path of `name` after checking it exists and its sha256 matches the manifest."""
    path = manifest.folder / name
    if not path.is_file():
        raise ArtifactError(f"{path} is missing from the artifact; re-run the export")
    expected = manifest.files.get(name)
    if expected is None:
        raise ArtifactError(f"{name} is not listed in {MANIFEST}; the artifact was edited by hand")
    actual = sha256_file(path)
    if actual != expected:
        raise ArtifactError(
            f"{path} is corrupted or was replaced (sha256 {actual[:12]}… != "
            f"{expected[:12]}… in {MANIFEST}); re-run the export"
        )
    return path


def verify_sources(manifest: Manifest, precision: str = "fp32") -> None:
    """The `precision` graph, tokenizer.json, and the configs listed beside them checked against the manifest:
    for tools that read an artifact with onnx or transformers (export.bf16, export.requantize, export.unprune),
    whose errors on a damaged file were tracebacks (onnx's DecodeError, "EOF while parsing")."""
    listed = [name for name in ("config.json", TOKENIZER_CONFIG, "special_tokens_map.json") if name in manifest.files]
    for name in (manifest.graphs[precision], TOKENIZER_FILE, *listed):
        verify_file(manifest, name)


def cleans_up_spaces(manifest: Manifest) -> bool:
    """Whether the artifact's tokenizer_config.json sets clean_up_tokenization_spaces (transformers' default,
    when the key is absent: False). An artifact without the file decodes as its tokenizer.json alone does."""
    if TOKENIZER_CONFIG not in manifest.files:
        return False
    path = verify_file(manifest, TOKENIZER_CONFIG)
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ArtifactError(f"{path} is not valid JSON ({exc}); re-run the export") from exc
    return isinstance(config, dict) and config.get("clean_up_tokenization_spaces") is True


def clean_up_spaces(text: str) -> str:
    """transformers' clean_up_tokenization: no space before punctuation and English contractions."""
    for dirty, clean in SPACE_CLEANUPS:
        text = text.replace(dirty, clean)
    return text

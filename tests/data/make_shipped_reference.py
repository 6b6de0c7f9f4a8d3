"""Write tests/data/shipped-reference.json: PyTorch's top-k for the shipped model, independent of ONNX Runtime.

    python tests/data/make_shipped_reference.py   # from the repo root; CPU, about a minute

The shipped model's PyTorch weights are not in the repo (runs/ is not committed), so the transformers
DistilBertForMaskedLM is rebuilt from the artifact's fused fp32 graph (export.reference.model_from_graph:
int8-stored weights dequantized exactly, each fused node's initializers mapped back to its parameters).
Before writing, the rebuilt model is checked against the runtime's graph with export's own fp32
validation (top-5, log-prob differences, perplexity) on the repo's IMDB sample; that check is recorded in
the JSON. An artifact exported after reference.json existed carries its own (from its real PyTorch model),
and this script copies that instead.

What the reference is independent of: ONNX Runtime, the graph fusions, deniro_rt's tokenization, batching
and post-processing. What it is not independent of: the weights, which are the graph's own.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[1]))  # run from anywhere: export/ is a top-level folder of the repo

from deniro_rt.artifact import FAST_GRAPHS, load_manifest  # noqa: E402
from deniro_rt.models import DEFAULT_MODEL_DIR  # noqa: E402
from export.reference import REFERENCE_FILE, model_from_graph, reference_record  # noqa: E402

OUT = HERE / "shipped-reference.json"
SAMPLE = HERE / "imdb-sample"


def mapping_check(model, tokenizer) -> dict:
    """export's fp32 validation of the shipped graph against the rebuilt model; raises if it fails."""
    from export.validate import ValidationSpec, build_validation_set, load_texts, validate

    texts, source = load_texts(str(SAMPLE), "test", "text")
    spec = ValidationSpec(vocab_size=model.config.vocab_size, max_positions=model.config.max_position_embeddings)
    data = build_validation_set(tokenizer, texts, source, spec)
    result = validate(
        model, {"fp32": DEFAULT_MODEL_DIR / FAST_GRAPHS["fp32"]}, data, {"fp32": ["CPUExecutionProvider"]}
    )["fp32"]
    if not result["passed"]:
        raise SystemExit(f"the rebuilt model disagrees with the shipped graph: {result['failed']}")
    return {**result, "source": "tests/data/imdb-sample split test (export's fp32 validation set)"}


def rebuilt_reference() -> dict:
    from transformers import AutoTokenizer

    model = model_from_graph(DEFAULT_MODEL_DIR)
    tokenizer = AutoTokenizer.from_pretrained(DEFAULT_MODEL_DIR)
    check = mapping_check(model, tokenizer)
    about = (
        "transformers DistilBertForMaskedLM rebuilt from the shipped fast.onnx (export.reference."
        "model_from_graph), each text alone; written by tests/data/make_shipped_reference.py"
    )
    return {**reference_record(model, tokenizer, about), "mapping_check": check}


def main() -> None:
    own = DEFAULT_MODEL_DIR / REFERENCE_FILE  # from the real PyTorch model, when the export wrote one
    record = json.loads(own.read_text()) if own.is_file() else rebuilt_reference()
    record["graph_sha256"] = load_manifest(DEFAULT_MODEL_DIR).files[FAST_GRAPHS["fp32"]]
    OUT.write_text(json.dumps(record, indent=1) + "\n")
    print(f"wrote {OUT}: {len(record['texts'])} texts, {sum(len(m) for m in record['masks'])} masks")


if __name__ == "__main__":
    main()

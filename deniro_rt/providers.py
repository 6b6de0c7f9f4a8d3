"""Resolve device -> ONNX Runtime execution provider, and precision -> graph, once, with clear errors."""

from __future__ import annotations

import os

import onnxruntime as ort

from .errors import DeniroError

DEVICES = ("auto", "cpu", "cuda")
CPU = "CPUExecutionProvider"
CUDA = "CUDAExecutionProvider"
# What each provider runs best, in order of preference when the caller does not choose. On CPU that is bf16
# for an artifact whose export validated bf16 against issue 22's gate (export/bf16.py), where OpenVINO is
# installed and the CPU's bf16 kernels are the kind the gate was measured on (deniro_rt.openvino.bf16_by_default;
# the shipped model: fp32's decisive answers, perplexity +0.01 %, batch-invariant, 1.45-2.2x faster), else fp32.
# int8 compute is an explicit opt-in: no int8 graph measured agrees with fp32 closely enough (docs/precision.md).
PREFERRED_PRECISION = {CPU: ("bf16", "fp32", "int8"), CUDA: ("fp16", "fp32")}
FLOAT_PRECISIONS = ("fp32", "fp16")
RUNS_ON = {"fp32": (CPU, CUDA), "int8": (CPU,), "fp16": (CUDA,)}
# Precisions computed from another graph by another engine, not graphs an artifact holds: bf16 is the fp32
# graph compiled by OpenVINO in bf16 on CPU (deniro_rt/openvino.py, the `openvino` extra; issue 22): faster than
# fp32 with fp32's decisive answers, but not fp32's scores to the last digit (precision="fp32" gives those).
COMPUTED = {"bf16": ("fp32", CPU)}  # precision -> (the graph it compiles, the provider it runs on)
# Declared here once; every stage's --device / --precision choices import these.
PRECISIONS = tuple(RUNS_ON)  # the graph precisions an artifact can hold
RUNTIME_PRECISIONS = PRECISIONS + tuple(COMPUTED)  # what FillMask(precision=...) accepts
HARDWARE = DEVICES[1:]  # what "auto" resolves to: the devices a graph is built or timed for
# The --precision help every CLI and the server show (the choice itself: resolve_precision).
PRECISION_HELP = (
    "bf16, fp32, int8 (CPU) or fp16 (CUDA). Default: on CPU bf16 where the openvino extra is installed, the "
    "CPU has AVX-512 BF16 without AMX and the model's export validated bf16 (the shipped one did: fp32's decisive "
    "answers, 1.45-2.2x faster end to end: docs/precision.md), else fp32; fp32 gives fp32's exact scores; int8 "
    "is opt-in. On CUDA fp16 if the artifact has it, else fp32"
)
GPU_INSTALL_HINT = 'pip uninstall -y onnxruntime && pip install "deniro[gpu]"'


def resolve_provider(device: str) -> str:
    """'auto' | 'cpu' | 'cuda' -> the execution provider name; CUDA must really be available."""
    if device not in DEVICES:
        raise DeniroError(f"device must be one of {', '.join(DEVICES)}, got {device!r}")
    available = ort.get_available_providers()
    if device == "cpu":
        return CPU
    if CUDA in available:
        return CUDA
    if device == "cuda":
        raise DeniroError(
            f"device='cuda' needs ONNX Runtime's CUDAExecutionProvider, but this "
            f"onnxruntime has only {', '.join(available)}; install the GPU build: "
            f"{GPU_INSTALL_HINT}"
        )
    return CPU


def session_providers(device: str) -> list[str]:
    """resolve_provider's choice as a session's provider list: CUDA keeps CPU behind it for the ops it lacks."""
    provider = resolve_provider(device)
    return [CUDA, CPU] if provider == CUDA else [CPU]


def resolve_precision(
    requested: str | None, provider: str, available: dict[str, str], validated: tuple[str, ...] = ()
) -> str:
    """Pick the precision: the caller's, checked, or the provider's best that the artifact has. validated: the
    computed precisions whose export validation passed for this artifact (only those can be its default)."""
    if requested is None:
        return default_precision(provider, available, validated)
    if requested in COMPUTED:
        return resolve_computed(requested, provider, available)
    if requested not in RUNS_ON:
        raise DeniroError(f"precision must be one of {', '.join(RUNTIME_PRECISIONS)}, got {requested!r}")
    if provider not in RUNS_ON[requested]:
        here = [p for p, on in RUNS_ON.items() if provider in on and p in available]  # what this artifact can do here
        raise DeniroError(
            f"precision {requested} does not run on {provider}; this artifact runs {', '.join(here) or 'nothing'} there"
        )
    if requested not in available:
        raise DeniroError(
            f"the artifact has no {requested} graph (it has {', '.join(available)}); "
            f"re-export with --precision {requested}"
        )
    return requested


def artifact_precision(requested: str | None, provider: str, manifest) -> str:
    """resolve_precision for an artifact (deniro_rt.artifact.Manifest): its graphs, and the computed precisions
    whose validation passed for it, the only ones that can be its default. FillMask and bench both ask this."""
    validated = tuple(p for p in COMPUTED if manifest.passed(p))
    return resolve_precision(requested, provider, manifest.graphs, validated)


def default_precision(provider: str, available: dict[str, str], validated: tuple[str, ...] = ()) -> str:
    """The provider's first preferred precision that the artifact has; a computed one only if it passed the
    artifact's validation and this machine runs it by default."""
    for precision in PREFERRED_PRECISION[provider]:
        if precision in COMPUTED:
            if precision in validated and COMPUTED[precision][0] in available and computed_by_default(precision):
                return precision
        elif precision in available:
            return precision
    raise DeniroError(
        f"the artifact has no graph for {provider} (it has {', '.join(available)}); re-export with --precision fp32"
    )


def computed_by_default(precision: str) -> bool:
    from .openvino import bf16_by_default  # lazily: OpenVINO is an extra, and deniro_rt.openvino imports this

    return precision == "bf16" and bf16_by_default()


def resolve_computed(requested: str, provider: str, available: dict[str, str]) -> str:
    graph, runs_on = COMPUTED[requested]
    if provider != runs_on:
        others = [p for p, on in RUNS_ON.items() if provider in on]
        raise DeniroError(f"precision {requested} runs on {runs_on} only; on {provider} use one of {', '.join(others)}")
    if graph not in available:
        raise DeniroError(
            f"precision {requested} compiles the artifact's {graph} graph, and it has only {', '.join(available)}; "
            f"re-export with --precision {graph}"
        )
    return requested


def session_options(provider: str, threads: int | None, precision: str | None = None) -> ort.SessionOptions:
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if precision in FLOAT_PRECISIONS:
        # A float graph may store its weights as int8 + DequantizeLinear (export --weights int8). ORT keeps
        # DequantizeLinear unfolded for its QDQ fusions, which would dequantize every weight on every call;
        # a float graph has no QDQ to fuse, so fold them once at load.
        options.add_session_config_entry("session.disable_quant_qdq", "1")
    if provider == CPU:
        # One intra-op thread per core: more threads than cores only adds contention.
        options.intra_op_num_threads = threads or usable_cores()
        options.inter_op_num_threads = 1
    options.log_severity_level = 3  # warnings about unused initializers etc. are noise to an app
    return options


def usable_cores() -> int:
    affinity = getattr(os, "sched_getaffinity", None)  # Linux: the cores this process may use
    return max(1, len(affinity(0)) if affinity else (os.cpu_count() or 1))

"""The device calls of a GPU lease (bench/gpu/README.md) and their transfer budget. Every call carries the
repo (tracked files as in the working tree, untracked ones git does not ignore) plus its `carry` paths, 64 MiB
(67.1 MB) in all. With the repo at 24 MB, neither the start point (45.5 MB) nor .ortgpu/part1 (50.7 MB with
the wheels) fits one call, so calls 1-3 each carry one folder, .carry/callN, laid out as /tmp on the device
(`cp -r .carry/callN/. /tmp/`), about 39-40 MB each. What follows depends on the lease's plan (PLANS):
issue 23 stashes the unsupervised text (3b), then trains the sweep (4) and times the loop (5); issue 21
installs onnxruntime-gpu and runs the columnar host path's rows on the base shape and the shipped model (4).

    python bench/gpu/calls.py stage            # hard-link the prepared payloads into .carry/call1..3
    python bench/gpu/calls.py check            # each call's MB, exit 1 when one is within MARGIN of the limit
    python bench/gpu/calls.py plan [issue23]   # a plan's calls as the device tool takes them (issue23, issue21)
    python bench/gpu/calls.py paths            # every carried path, for ../shared/tools/ort-gpu/budget.sh
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from carry import PACK_JSON, PARTS_GLOB, recorded_sha256

ROOT = Path(__file__).resolve().parents[2]
LIMIT = 64 * 2**20  # what one call may carry in all
MARGIN = 1_000_000  # kept free in every call: the repo grows between this check and the calls
RUN_ENV = "export -p | grep -E ' (PYTHONPATH|LD_LIBRARY_PATH)=' > /tmp/ortenv.sh"  # install.sh's env, for call 5


@dataclass(frozen=True)
class Call:
    carry: tuple[str, ...]
    timeout_s: int
    command: str


INSTALL = f"source .ortgpu/part2/install.sh && {RUN_ENV}"  # onnxruntime-gpu on PYTHONPATH, kept for later calls
STASH = (  # calls 1-3 of every plan: onnxruntime-gpu's first half, the wheels, the IMDB text, the start point
    Call((".carry/call1",), 60, "cp -rv .carry/call1/. /tmp/"),
    Call((".carry/call2",), 60, "cp -rv .carry/call2/. /tmp/"),
    Call((".carry/call3",), 60, "cp -rv .carry/call3/. /tmp/"),
)
PLANS = {
    # Issue 23: the sweep from the shipped model's full-vocabulary source (START=runs/shipped-full when preparing),
    # chosen on validation, the unsupervised text as extra MLM data; then the loop's speed alone (call 5, when
    # >= 5 min of device time are left). STAGES=none: run.sh only unpacks the text, joins the start point and
    # checks the environment (~20 s).
    "issue23": (
        *STASH,
        Call((".carry/extra",), 60, "cp -rv .carry/extra/. /tmp/"),
        Call(
            (".ortgpu/part2",),
            580,
            f"{INSTALL} && STAGES=none bash bench/gpu/run.sh && PRESET=deniro bash bench/gpu/sweep.sh",
        ),
        Call((), 230, "source /tmp/ortenv.sh && STAGES=loop BUDGET_S=200 bash bench/gpu/run.sh"),
    ),
    # Issue 21: the base shape exported (no bench all: baseonnx), then the arrays stage: dicts / columnar /
    # graph-only rows on the shipped model and the base shape, the B=1 prompt, pytest -m gpu, the load test.
    "issue21": (
        *STASH,
        Call((".ortgpu/part2",), 580, f"{INSTALL} && STAGES=baseonnx,arrays BUDGET_S=540 bash bench/gpu/run.sh"),
    ),
}
CALLS = tuple(dict.fromkeys(call for plan in PLANS.values() for call in plan))  # every call of every plan, once
# What the carried folders hold (du -sb, 26 Nov and 3 Dec 2026), for checking the plans where nothing is
# prepared (CI).
NOMINAL_BYTES = {
    ".carry/call1": 39_240_799,  # 35,458,368 + the serve wheels (3,778,335 + the folder's 4 KB)
    ".carry/call2": 39_706_645,
    ".carry/call3": 39_750_260,
    ".carry/extra": 17_464_556,  # the 50,000 unsupervised reviews, xz
    ".ortgpu/part2": 34_110_513,
}


def stash_sources(root: Path = ROOT) -> dict[str, list[tuple[Path, str]]]:
    """(source, folder under /tmp) for calls 1-3: each ~34 MB half of onnxruntime-gpu rides alone or with
    small files (install.sh wants /tmp/ortgpu/ort.tar.xz.aa + wheels/: the serve wheels, 3.8 MB, beside the
    first half, call 2's beside a start point part), the rest is shared out evenly."""
    init = root / ".carry" / "minilm-parts"
    parts = sorted(init.glob(PARTS_GLOB))
    side = sorted(p for p in init.glob("*") if p not in parts)  # config, tokenizer, minilm-pack.json: 0.9 MB
    part1 = root / ".ortgpu" / "part1"
    return {
        "call1": [
            (part1 / "ort.tar.xz.aa", "ortgpu"),
            (root / ".carry" / "serve" / "wheels", "ortgpu"),  # joins call 2's wheels/ on the device (cp -r merges)
            *((p, "minilm-parts") for p in side),
        ],
        "call2": [(part1 / "wheels", "ortgpu"), *((p, "minilm-parts") for p in parts[:1])],
        "call3": [(root / ".carry" / "text", "carry"), *((p, "minilm-parts") for p in parts[1:])],
    }


def link_tree(src: Path, dst: Path) -> None:
    """Hard links (no second copy of 110 MB here), or a copy where the file system has none."""
    if src.is_dir():
        shutil.copytree(src, dst, copy_function=link_or_copy)
    else:
        link_or_copy(src, dst)


def link_or_copy(src, dst) -> None:
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def stage(root: Path = ROOT) -> list[str]:
    """.carry/call1..3 rebuilt from the prepared payloads; returns the sources that are missing."""
    missing = []
    for call, sources in stash_sources(root).items():
        shutil.rmtree(root / ".carry" / call, ignore_errors=True)
        for src, folder in sources:
            if not src.exists():
                missing.append(str(src.relative_to(root)))
                continue
            (root / ".carry" / call / folder).mkdir(parents=True, exist_ok=True)
            link_tree(src, root / ".carry" / call / folder / src.name)
    return missing


def repo_bytes(root: Path = ROOT) -> int:
    """What every call carries besides its paths, counted as budget.sh does: tracked files as they are
    in the working tree (a deleted one does not travel), untracked ones that git does not ignore."""
    listed = (
        subprocess.run(
            ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
            cwd=root,
            check=True,
            capture_output=True,
        )
        .stdout.decode()
        .split("\0")
    )
    return sum(os.lstat(root / name).st_size for name in set(listed) if name and os.path.lexists(root / name))


def path_bytes(path: Path) -> int:
    """du -sb's count (folders' own 4 KB included, as budget.sh sees it): a little over the files alone."""
    if not path.is_dir():
        return path.lstat().st_size
    return path.lstat().st_size + sum(p.lstat().st_size for p in path.rglob("*"))


def measured(root: Path = ROOT) -> dict[str, int | None]:
    """Each carry path's bytes here, None where it is missing."""
    paths = {p for call in CALLS for p in call.carry}
    return {p: path_bytes(root / p) if (root / p).exists() else None for p in sorted(paths)}


def sha256_of(files: list[Path]) -> str:
    digest = hashlib.sha256()
    for file in files:
        digest.update(file.read_bytes())
    return digest.hexdigest()


def join_errors(root: Path = ROOT) -> list[str]:
    """What the device will join, joined here first from the staged copies: onnxruntime-gpu's two halves
    (as install.sh checks them) and the start point's parts, gathered from calls 1-3 as /tmp will hold them."""
    errors = []
    aa, part2 = root / ".carry/call1/ortgpu/ort.tar.xz.aa", root / ".ortgpu/part2"
    if (
        aa.is_file()
        and (part2 / "ort.sha256").is_file()
        and sha256_of([aa, part2 / "ort.tar.xz.ab"]) != (part2 / "ort.sha256").read_text().split()[0]
    ):
        errors.append("onnxruntime-gpu: call 1's half and part2 do not match ort.sha256 (prepare again)")
    staged = sorted(root.glob(".carry/call[0-9]/minilm-parts/*"), key=lambda p: p.name)
    parts = [p for p in staged if p.match(PARTS_GLOB)]
    report = [p for p in staged if p.name == PACK_JSON]
    if not parts or len(report) != 1 or sha256_of(parts) != recorded_sha256(report[0].parent):
        errors.append(f"MiniLM start point: the staged parts do not join to {PACK_JSON}'s sha256")
    return errors


def mb(n: int) -> str:
    return f"{n / 1e6:.1f} MB"


def call_names() -> dict[Call, str]:
    """Each call's name as the README's tables give it: 1-3 (every plan), then 3b, 4, 5 of issue 23, 4 of 21."""
    names = {call: str(i) for i, call in enumerate(STASH, 1)}
    for plan, calls in PLANS.items():
        own = [call for call in calls if call not in STASH]
        numbers = ["3b", "4", "5"] if plan == "issue23" else ["4"]
        names.update((call, f"{number} ({plan})") for call, number in zip(own, numbers, strict=True))
    return names


def report(repo: int, sizes: dict[str, int | None]) -> tuple[list[str], bool]:
    """One line per call (its paths, its total, what is left) and whether every call fits with MARGIN."""
    lines, fits = [f"repo (tracked + untracked not ignored): {mb(repo)}; limit {mb(LIMIT)}, margin {mb(MARGIN)}"], True
    for call, name in call_names().items():
        gone = [p for p in call.carry if sizes[p] is None]
        if gone:
            lines.append(f"call {name}: {', '.join(gone)} missing (bash bench/gpu/prepare_carry.sh --ortgpu)")
            fits = False
            continue
        total = repo + sum(sizes[p] for p in call.carry)
        ok = total <= LIMIT - MARGIN
        fits &= ok
        paths = " + ".join(f"{p} {mb(sizes[p])}" for p in call.carry) or "no carry"
        lines.append(f"call {name}: {paths} -> {mb(total)}, {mb(LIMIT - total)} left  {'ok' if ok else 'TOO BIG'}")
    return lines, fits


def print_plan(plan: str) -> int:
    if plan not in PLANS:
        print(f"no plan {plan!r}: choose one of {', '.join(PLANS)}", file=sys.stderr)
        return 2
    names = call_names()
    for call in PLANS[plan]:
        print(
            f"call {names[call].split()[0]}:",
            json.dumps({"carry": list(call.carry), "timeout_s": call.timeout_s, "command": call.command}),
        )
    return 0


def main(argv: list[str]) -> int:
    command = argv[0] if argv else "check"
    if command == "stage":
        missing = stage()
        print("staged .carry/call1..3" + (f"; missing: {', '.join(missing)}" if missing else ""))
        return 1 if missing else 0
    if command == "plan":
        return print_plan(argv[1] if len(argv) > 1 else "issue23")
    if command == "paths":
        print("\n".join(dict.fromkeys(p for call in CALLS for p in call.carry)))
        return 0
    lines, fits = report(repo_bytes(), measured())
    errors = join_errors()
    print("\n".join(lines + [f"error: {e}" for e in errors]))
    return 0 if fits and not errors else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

"""`python -m deniro_rt` as a user runs it: real subprocesses on the tiny artifact, answers compared with the
library's own fill() (itself compared with transformers in test_runtime.py and test_reference.py)."""

from __future__ import annotations

import json
import os
import pty
import re
import subprocess
import sys
from pathlib import Path

import pytest

from deniro_rt import FillMask

REPO = Path(__file__).resolve().parents[1]
LONG = "the movie was long and slow . " * 40 + "the ending was [MASK] ." + " and then it was over ." * 10


def cli(*args: str, stdin: str | None = "", **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "deniro_rt", *args],
        input=stdin,
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=120,
        **kwargs,
    )


def json_rows(out: str) -> list[dict]:
    return [json.loads(line) for line in out.splitlines()]


def as_json(value):
    return json.loads(json.dumps(value))  # tuples (multi-piece targets) become lists, as on stdout


@pytest.fixture(scope="module")
def fm(tiny_artifact):
    return FillMask(tiny_artifact, device="cpu", precision="fp32")


@pytest.fixture(scope="module")
def model_args(tiny_artifact) -> list[str]:
    return ["--model", str(tiny_artifact), "--device", "cpu", "--precision", "fp32"]


def test_targets_mixed_pieces_and_several_texts(fm, model_args):
    texts = ["this is a great [MASK] !", "the [MASK] was great but the [MASK] was too long ."]
    done = cli(*texts, *model_args, "--targets", "movie,film,masterpiece,film", "--top-k", "3", "--json")
    assert done.returncode == 0, done.stderr
    rows = json_rows(done.stdout)
    expected = fm.fill(texts, targets=["movie", "film", "masterpiece", "film"], top_k=3)
    assert [r["text"] for r in rows] == texts and [r["result"] for r in rows] == as_json(expected)


@pytest.mark.parametrize("targets", ["movie,,film", "movie,film,", ""])
def test_an_empty_target_word_is_one_error_naming_the_flag(model_args, targets):
    """ "movie,,film" failed with the runtime's "targets must be a non-empty list of non-empty strings, got
    ['movie', '', 'film']", and --targets "" ranked the whole vocabulary as if no targets were given."""
    done = cli("a great [MASK] .", *model_args, "--targets", targets)
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr.strip() == (
        f"error: --targets {targets!r} has an empty word; pass comma-separated words, e.g. --targets movie,film"
    )


def test_targets_may_have_spaces_after_commas(fm, model_args):
    done = cli("a great [MASK] .", *model_args, "--targets", "movie, film", "--json")
    assert done.returncode == 0, done.stderr
    assert json_rows(done.stdout)[0]["result"] == as_json(fm.fill("a great [MASK] .", targets=["movie", "film"]))


def test_joint_json_and_table(fm, model_args):
    text = "the [MASK] was great but the [MASK] was too long ."
    done = cli(text, *model_args, "--joint", "--json")
    assert done.returncode == 0, done.stderr
    [row] = json_rows(done.stdout)
    assert row["result"] == as_json(fm.fill(text, joint=True))
    table = cli(text, *model_args, "--joint")
    result = row["result"]
    assert table.stdout.splitlines() == [text, f"  {result['sequence']}  (score {result['score']:.4f})"]


def test_truncation_flag(fm, model_args):
    refused = cli(LONG, *model_args)
    assert refused.returncode == 2 and refused.stdout == ""
    assert refused.stderr.startswith("error: text 0 is ")  # the fix as this command spells it:
    assert refused.stderr.strip().endswith("shorten it, or pass --truncation to keep a window around the masks")
    assert "Traceback" not in refused.stderr
    done = cli(LONG, *model_args, "--truncation", "--json", "--top-k", "3")
    assert done.returncode == 0, done.stderr
    assert json_rows(done.stdout)[0]["result"] == as_json(fm.fill(LONG, truncation=True, top_k=3))


def test_stdin_lines_table(fm, model_args):
    done = cli(*model_args, "--top-k", "2", stdin="a [MASK] day\n\n   \nthe [MASK] end\n")
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    first, second = fm.fill(["a [MASK] day", "the [MASK] end"], top_k=2)
    assert lines[0] == "a [MASK] day" and lines[3] == "the [MASK] end" and len(lines) == 6  # blank lines skipped
    assert lines[1].split()[:2] == ["1", first[0]["token_str"]] and lines[5].split()[:2] == [
        "2",
        second[1]["token_str"],
    ]


def test_stdin_errors_name_the_line_and_crlf_is_a_line_end(fm, model_args):
    done = cli(*model_args, "--json", stdin="a [MASK] day\r\n")
    assert [row["text"] for row in json_rows(done.stdout)] == ["a [MASK] day"]  # the \r was kept in the text
    done = cli(*model_args, stdin="a [MASK] day\n\n\nhello\n")  # text 1 is line 4
    assert (done.returncode, done.stdout) == (2, "")
    assert done.stderr.strip() == (
        "error: stdin line 4: text 1 has no [MASK]: 'hello'; put [MASK] where a word should be predicted"
    )
    latin1 = subprocess.run(
        [sys.executable, "-m", "deniro_rt", *model_args], input=b"a [MASK] day\ncaf\xe9 [MASK]\n", capture_output=True
    )  # was a 28-line traceback from deep inside the tokenizer
    assert latin1.returncode == 2 and latin1.stderr.decode().strip() == (
        "error: stdin line 2: text 1 is not valid Unicode (character 3: '\\udce9', from bytes that are not UTF-8?); "
        "decode the input as UTF-8"
    )


def test_empty_stdin_prints_nothing_and_succeeds(model_args):
    """An empty file piped in (or a filter that matched nothing) is an empty batch, like `cat`: no output,
    exit 0, in both output formats."""
    for extra in ([], ["--json"]):
        done = cli(*model_args, *extra, stdin="")
        assert (done.returncode, done.stdout, done.stderr) == (0, "", "")
    done = cli(*model_args, stdin="\n  \n")
    assert (done.returncode, done.stdout) == (0, "")


def test_no_texts_at_a_terminal_is_a_usage_error(model_args):
    """Nothing piped in and no texts: a clear error instead of waiting silently for the terminal."""
    parent, child = pty.openpty()
    try:
        done = subprocess.run(
            [sys.executable, "-m", "deniro_rt", *model_args],
            stdin=child,
            capture_output=True,
            text=True,
            cwd=REPO,
            timeout=60,
        )
    finally:
        os.close(child)
        os.close(parent)
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr.strip() == (
        'error: no texts; pass them as arguments (python -m deniro_rt "A great [MASK]!") or pipe lines on stdin'
    )


def test_serve_help_states_each_default_once(capsys):
    """--precision's and --threads' help text says what the default is ("Default: on CPU bf16 where ...",
    "default: one per usable core"); config_parser added a raw "(default: None)" after both."""
    from deniro_rt.serve.__main__ import parse_args

    with pytest.raises(SystemExit):
        parse_args(["--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "(default: None)" not in text
    assert "On CUDA fp16 if the artifact has it, else fp32 --host HOST" in text  # the stated default alone
    assert "(default: 64) --max-wait-ms" in text  # a field whose text states none still gets its note


def test_a_help_text_saying_required_gets_no_default(capsys):
    """python -m export.bf16 --help showed "--artifact ... (required) (default: None)"."""
    from export.bf16 import parse_args

    with pytest.raises(SystemExit):
        parse_args(["--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "validation['bf16'] (required) --dataset DATASET" in text
    assert "(default: None)" not in text


def test_the_precision_help_quotes_the_measured_bf16_speedup():
    """--precision's help said 1.5-2.2x while the docs said 1.45-2.2x: docs/precision.md's measured figures
    (bf16 vs fp32 end to end: 1.45x at batch 1 on the prompt, 2.21x at batch 32) are the source."""
    from deniro_rt.providers import PRECISION_HELP

    root = Path(__file__).resolve().parents[1]
    speedup = re.compile(r"(\d\.\d+)[-–](\d\.\d+)[x×] faster")
    stated = {
        "--precision help": speedup.search(PRECISION_HELP),
        "README.md": speedup.search((root / "README.md").read_text()),
        "docs/runtime.md": speedup.search((root / "docs/runtime.md").read_text()),
        "docs/precision.md": re.search(r"(\d\.\d+)[-–](\d\.\d+)× fp32", (root / "docs/precision.md").read_text()),
    }
    assert {name: found.groups() for name, found in stated.items()} == dict.fromkeys(stated, ("1.45", "2.2"))
    measured = (root / "docs/precision.md").read_text()
    assert "1.45× at batch 1** (16 / 128 tokens / the prompt), **2.21×" in measured


class InterruptedStdin:
    """Piped stdin whose read is cut by Ctrl-C (a slow producer upstream)."""

    buffer = None

    def isatty(self) -> bool:
        return False

    def __iter__(self):
        raise KeyboardInterrupt


def test_ctrl_c_while_reading_stdin_or_loading_is_one_line(model_args, monkeypatch, capsys):
    """run_main had no line for Ctrl-C, and stdin was read before it: Ctrl-C while the lines were read, the
    session loaded or the texts were filled was a KeyboardInterrupt traceback."""
    from deniro_rt import runtime
    from deniro_rt.__main__ import run

    line = "interrupted: the results printed above are complete, no others were printed"
    with monkeypatch.context() as patch:
        patch.setattr("sys.stdin", InterruptedStdin())
        assert run(model_args) == 130
    assert capsys.readouterr().err.strip() == line

    def ctrl_c(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(runtime.FillMask, "__init__", ctrl_c)  # Ctrl-C while the session loads
    assert run(["a great [MASK] .", *model_args]) == 130
    assert capsys.readouterr().err.strip() == line

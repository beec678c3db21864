"""A language-model text file of one very long line (issue 18: a 100 MB line peaked at 11.7 GB for 2 steps) is
read and tokenised in pieces, so memory stays flat however long the line is."""

from __future__ import annotations

import io
import subprocess
import sys

from tests.tiny import ROOT, cli_environ
from trainer.tasks.kinds.language_model import LINE_PIECE_CHARS, line_pieces

WORDS = ["the", "quick", "brown", "fox", "jumps", "over", "a", "lazy", "dog", "while", "seven", "wizards",
         "quietly", "hex"]


def one_line(chars: int) -> str:
    line = " ".join(WORDS[i % len(WORDS)] for i in range(chars // 5))
    return line[:chars]


# The path `train` takes for a split file (read and validate into Arrow, then `datasets.map` to blocks), for a
# 3 MB and then a 9 MB one-line file in one child process; it prints the peak RSS after each, in MB.
PROBE = """
import resource, sys
from pathlib import Path
from trainer.data.arrow_split import read_local_split
from trainer.data.dataset import tokenize_split
from trainer.tasks.demo import build_demo_tokenizer
from trainer.tasks.declare import load_tasks_file

tokenizer = build_demo_tokenizer()
task = load_tasks_file(sys.argv[1])["text"]
for name in sys.argv[2:]:
    blocks = tokenize_split(task, read_local_split(task, name), tokenizer, 128)
    print(len(blocks), resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024, flush=True)
"""


def test_a_one_line_text_file_is_read_and_tokenised_in_flat_memory(tmp_path):
    """Before, a line cost about 100 bytes of memory per character (a 100 MB line: 11.7 GB); in pieces, a line three
    times as long costs no more memory."""
    (tmp_path / "tasks.yaml").write_text("tasks:\n  - {name: text, type: masked_lm, train_file: small.txt, "
                                         "dev_file: small.txt}\n")
    (tmp_path / "small.txt").write_text(one_line(3_000_000) + "\n")
    (tmp_path / "large.txt").write_text(one_line(9_000_000) + "\n")
    result = subprocess.run([sys.executable, "-c", PROBE, str(tmp_path / "tasks.yaml"), str(tmp_path / "small.txt"),
                             str(tmp_path / "large.txt")], cwd=ROOT,
                            env=cli_environ({"HF_DATASETS_CACHE": str(tmp_path / "cache")}), capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    (small_blocks, small), (large_blocks, large) = (map(int, line.split()) for line in result.stdout.splitlines())
    assert large_blocks > 2.9 * small_blocks  # every character was read and tokenised
    print(f"peak RSS {small} MB after a 3 MB line, {large} MB after a 9 MB one")
    assert large - small < 100, f"peak RSS {small} MB after a 3 MB line, {large} MB after a 9 MB one"


def test_a_long_line_comes_in_pieces_cut_at_spaces_that_join_back_to_it():
    line = one_line(3 * LINE_PIECE_CHARS + 100)
    text = f"first\n\n{line}\r\n{'x' * (LINE_PIECE_CHARS + 5)}\nlast"
    pieces = list(line_pieces(io.StringIO(text, newline=None)))
    assert pieces[0] == (1, "first") and pieces[-1] == (5, "last")
    long = [piece for lineno, piece in pieces if lineno == 3]
    assert "".join(long) == line and len(long) == 4
    assert all(len(p) <= LINE_PIECE_CHARS and p.endswith(" ") for p in long[:-1])  # cut after a space
    assert [p for lineno, p in pieces if lineno == 4] == ["x" * LINE_PIECE_CHARS, "xxxxx"]  # no space: cut anyway

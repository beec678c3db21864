"""Data at scale: load + tokenise time, rows/s and peak memory of a large local split, cold and cached.

Generates once (kept in the temp dir, named by size, so later runs reuse them):
- a 1,000,000-row classification TSV (`sentence<TAB>label`, 4-30 words per row, SST-2-like);
- a 200 MB text file for masked LM (one paragraph per line, 20-200 words, a blank line every tenth).

Then, each in a fresh subprocess, reads and tokenises each file as training does
(`read_local_split` + `tokenize_split`) with an empty datasets cache (cold) and again with that cache
(the second start), and prints time, rows/s, peak RSS of the process and of its largest tokenising worker,
and the CPU time (this machine's 2 cores are shared: wall-clock rows/s falls with the load, CPU time less).
For the classification file it also times the tokenizer alone on the same texts (its Rust `encode_batch_fast`
in a single-threaded process per core, nothing else), the ceiling that load + tokenise is compared with.
Targets: peak RSS < 2 GB, >= 50,000 rows/s tokenised on 2 cores, a cached second start < 5 s.

    .venv/bin/python benchmarks/data_scale.py [--rows 1000000] [--text_mb 200] [--model DIR] [--only cls|mlm]

The tokenizer is the MiniLM's in ../shared/models/all-MiniLM-L6-v2 (a real WordPiece vocabulary), else the
demo tokenizer. MAX_SEQ_LENGTH is 128.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MINILM = ROOT.parent / "shared" / "models" / "all-MiniLM-L6-v2"
MAX_LENGTH = 128
_WORD_TEXT = (
    "the a of and to in is it that was for on with as his he at by be this had not are but from or have an they "
    "which one you were her all she there would their we him been has when who will more no if out so said what up "
    "its about into than them can only other new some could time these two may then do first any my now such like "
    "our over man me even most made after also did many before must through back years where much your way well "
    "down should because each just those people how too little state good very make world still own see men work "
    "long get here between both life being under never day same another know while last might us great old year "
    "off come since against go came right used take three film movie story plot actor scene funny boring charming "
    "dull brilliant performance director script ending music characters drama comedy thriller worst best moving"
)
WORDS = _WORD_TEXT.split()


def generate(directory: Path, rows: int, text_mb: int, one_line: bool = False) -> tuple[Path, Path]:
    """The two files, written once per size (a `.partial` until complete); `one_line`: the text file's
    paragraphs joined into one line (issue 18: a 100 MB line once peaked at 11.7 GB)."""
    directory.mkdir(parents=True, exist_ok=True)
    shape = "-one-line" if one_line else ""
    tsv, txt = directory / f"classification-{rows}.tsv", directory / f"masked-lm-{text_mb}MB{shape}.txt"
    rng = random.Random(0)
    if not tsv.is_file():
        partial = tsv.with_suffix(".partial")
        with open(partial, "w", encoding="utf-8") as handle:
            handle.write("sentence\tlabel\n")
            for _ in range(rows):
                handle.write(f"{' '.join(rng.choices(WORDS, k=rng.randint(4, 30)))}\t{rng.randint(0, 1)}\n")
        partial.replace(tsv)
    if not txt.is_file():
        partial, size, line = txt.with_suffix(".partial"), 0, 0
        with open(partial, "w", encoding="utf-8") as handle:
            while size < text_mb << 20:
                text = "" if line % 10 == 9 else " ".join(rng.choices(WORDS, k=rng.randint(20, 200))) + " ."
                size += handle.write(text + (" " if one_line else "\n"))
                line += 1
            handle.write("\n")
        partial.replace(txt)
    return tsv, txt


def measure(kind: str, path: str, model: str) -> dict[str, float]:
    """In this (fresh) process: read and tokenise one file as training does; time and peak memory."""
    sys.path.insert(0, str(ROOT))
    from trainer.data.arrow_split import read_local_split
    from trainer.data.dataset import tokenize_processes, tokenize_split
    from trainer.tasks.spec import TaskSpec

    if kind == "cls":
        task = TaskSpec(name="scale_cls", type="classification", train_file=path, dev_file=path,
                        options={"text_columns": ("sentence",), "label_column": "label", "labels": ("0", "1")})
    else:
        task = TaskSpec(name="scale_mlm", type="masked_lm", train_file=path, dev_file=path)
    if model == "demo":
        from trainer.tasks.demo import build_demo_tokenizer

        tokenizer = build_demo_tokenizer()
    else:
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(model)
    start, cpu_start = time.perf_counter(), _cpu_seconds()
    rows = read_local_split(task, path)
    loaded = time.perf_counter()
    tokenized = tokenize_split(task, rows, tokenizer, MAX_LENGTH)
    done = time.perf_counter()
    return {
        "rows": len(rows), "examples": len(tokenized), "load_s": loaded - start, "tokenize_s": done - loaded,
        "total_s": done - start, "cpu_s": _cpu_seconds() - cpu_start, "rows_per_s": len(rows) / (done - start),
        "processes": tokenize_processes(len(rows)) or 1,
        "rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "worker_rss_mb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024,
        "tokens": sum(tokenized["length"][:]) if kind == "mlm" else 0,
    }


_BARE: list = []  # the ceiling's tokenizer, in each of its worker processes


def _bare_encode(texts: list[str]) -> int:
    return len(_BARE[0].encode_batch_fast(texts))


def ceiling(path: str, model: str) -> dict[str, float]:
    """The tokenizer alone on the same texts: its Rust `encode_batch_fast` in one single-threaded process per
    core (faster here than one process with the tokenizer's own thread pool), no reading, no datasets, no Python
    lists: the fastest this tokenizer tokenises them on this machine."""
    import multiprocessing

    import pyarrow.csv as pcsv
    from tokenizers import Tokenizer
    from transformers import AutoTokenizer

    texts = pcsv.read_csv(path, parse_options=pcsv.ParseOptions(delimiter="\t")).column("sentence").to_pylist()
    backend = Tokenizer.from_str(AutoTokenizer.from_pretrained(model).backend_tokenizer.to_str())
    backend.no_padding()
    backend.enable_truncation(MAX_LENGTH)
    _BARE.append(backend)
    chunks = [texts[i : i + 1000] for i in range(0, len(texts), 1000)]
    start = time.perf_counter()
    with multiprocessing.get_context("fork").Pool(os.cpu_count()) as pool:
        encoded = sum(pool.map(_bare_encode, chunks, chunksize=50))
    return {"rows": encoded, "rows_per_s": encoded / (time.perf_counter() - start)}


def _cpu_seconds() -> float:
    """CPU time of this process and its (finished) tokenising workers."""
    own, workers = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + workers.ru_utime + workers.ru_stime


def run_measurement(kind: str, path: Path, model: str, cache: Path) -> dict[str, float]:
    env = {**os.environ, "HF_DATASETS_CACHE": str(cache), "HF_HUB_OFFLINE": "1",
           "HF_DATASETS_DISABLE_PROGRESS_BARS": "1"}
    if kind == "ceiling":
        env["TOKENIZERS_PARALLELISM"] = "false"
    out = subprocess.run([sys.executable, __file__, "--measure", kind, "--file", str(path), "--model", model],
                         env=env, capture_output=True, text=True, check=False)
    if out.returncode:
        sys.exit(f"measurement failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--text_mb", type=int, default=200)
    parser.add_argument("--model", default=str(MINILM) if MINILM.is_dir() else "demo")
    parser.add_argument("--only", choices=("cls", "mlm"))
    parser.add_argument("--one_line", action="store_true", help="the text file as one single line")
    parser.add_argument("--measure", choices=("cls", "mlm", "ceiling"), help=argparse.SUPPRESS)
    parser.add_argument("--file", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.measure:
        result = ceiling(args.file, args.model) if args.measure == "ceiling" else measure(args.measure, args.file,
                                                                                            args.model)
        print(json.dumps(result))
        return
    tsv, txt = generate(Path(tempfile.gettempdir()) / "trainer-data-scale", args.rows, args.text_mb,
                        args.one_line)
    print(f"machine: {os.cpu_count()} CPU cores, load average {os.getloadavg()[0]:.1f} (shared with other work); "
          f"tokenizer {args.model}; MAX_SEQ_LENGTH {MAX_LENGTH}")
    for kind, path in (("cls", tsv), ("mlm", txt)):
        if args.only and kind != args.only:
            continue
        cache = Path(tempfile.mkdtemp(prefix="data-scale-cache-"))
        try:
            cold = run_measurement(kind, path, args.model, cache)
            warm = run_measurement(kind, path, args.model, cache)
            bare = run_measurement("ceiling", path, args.model, cache)["rows_per_s"] \
                if kind == "cls" and args.model != "demo" else None
        finally:
            shutil.rmtree(cache, ignore_errors=True)
        size = path.stat().st_size / 2**20
        extra = f", {cold['tokens']:,} tokens" if kind == "mlm" else ""
        print(f"\n{path.name} ({size:.0f} MB, {cold['rows']:,} rows -> {cold['examples']:,} examples{extra}):")
        for name, m in (("cold", cold), ("cached", warm)):
            print(f"  {name:<6} load {m['load_s']:6.2f} s + tokenise {m['tokenize_s']:6.2f} s = {m['total_s']:6.2f} s;"
                  f" {m['rows_per_s']:>10,.0f} rows/s; {m['processes']} process(es); peak RSS {m['rss_mb']:5.0f} MB"
                  f" (largest worker {m['worker_rss_mb']:.0f} MB); CPU {m['cpu_s']:.1f} s ="
                  f" {m['rows'] / m['cpu_s']:,.0f} rows per CPU-second")
        if bare:
            print(f"  the tokenizer alone (Rust encode_batch_fast, a process per core): {bare:,.0f} rows/s;"
                  f" load + tokenise, cold, runs at {cold['rows_per_s'] / bare:.2f}x that")
        if kind == "mlm":  # its rows are paragraphs of 20-200 words: tokens/s says more than rows/s
            print(f"  cold: {cold['tokens'] / cold['total_s']:,.0f} tokens/s")
        speed = f">= 50,000 rows/s: {cold['rows_per_s'] >= 50_000}; " if kind == "cls" else ""
        print(f"  targets: peak RSS < 2048 MB: {max(cold['rss_mb'], cold['worker_rss_mb']) < 2048}; {speed}"
              f"cached start < 5 s: {warm['total_s'] < 5}")


if __name__ == "__main__":
    main()

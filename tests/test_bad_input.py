"""Bad input, as a hostile user types it: every row gets one `error:` line, exit != 0, no traceback, and nothing
written, neither locally nor in the bucket.

Each row runs the real CLI in its own process, forked from one helper that imported torch and transformers once
(tests/cli_fork.py); `test_the_forked_runner_is_faithful` runs a few rows as true `python -m trainer`
subprocesses too. Rows name their files relative to the row's own folder (`{tmp}`); `{run}` is a trained demo
run (read-only), `{bucket}` an emulated bucket, `{readonly}` a place nobody may write.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.gcs_emulator import GcsEmulator
from tests.tiny import cli_environ, run_cli


@dataclass(frozen=True)
class Row:
    args: tuple[str, ...]
    env: dict[str, str]
    error: str  # a regex the one error line must match
    files: dict[str, str | bytes] = field(default_factory=dict)
    stdin: str = ""


def train(error: str, files: dict[str, str | bytes] | None = None, *flags: str, **env: str) -> Row:
    return Row(("train", *flags), env, error, files or {})


def command(args: str, error: str, files: dict[str, str | bytes] | None = None, stdin: str = "", **env: str) -> Row:
    return Row(tuple(args.split()), {"OUTPUT_DIR": "{run}", **env}, error, files or {}, stdin)


DATA = {"train.tsv": "text\tlabel\ngood\tyes\nbad\tno\n", "dev.tsv": "text\tlabel\nfine\tyes\n"}
TASK = ("{{name: mine, type: classification, text_columns: [text], label_column: label, labels: [yes, no], "
        "train_file: train.tsv, dev_file: dev.tsv{}}}")


def tasks_file(*extras: str, task: str = TASK, data: dict[str, str | bytes] | None = None) -> dict[str, str | bytes]:
    """DATA plus tasks.yaml declaring one task per extra (`, field: value` appended to the task)."""
    body = "tasks:\n" + "".join(f"  - {task.format(extra)}\n" for extra in extras or ("",))
    return {**DATA, **(data or {}), "tasks.yaml": body}


def mine(error: str, *extras: str, task: str = TASK, data: dict[str, str | bytes] | None = None, **env: str) -> Row:
    """Train the task of tasks.yaml."""
    return train(error, tasks_file(*extras, task=task, data=data), TASKS_FILE="{tmp}/tasks.yaml", **env)


MC = ("{{name: quiz, type: multiple_choice, text_columns: [q], choice_columns: [a, b], label_column: answer, "
      "train_file: train.tsv, dev_file: dev.tsv{}}}")
NER = "{{name: ner, type: token_classification, labels: [O, B-PER], train_file: t.conll, dev_file: t.conll{}}}"
S2S = ("{{name: s2s, type: seq2seq, source_column: text, target_column: label, train_file: train.tsv, "
       "dev_file: dev.tsv{}}}")
STSB_HEADER = "index\tgenre\tfilename\tyear\told_index\tsource1\tsource2\tsentence1\tsentence2\tscore\n"
PARALLEL = ("{{name: tw, type: classification, labels: [neg, pos], train_file: tr.txt, train_labels_file: trl.txt, "
            "dev_file: d.txt, dev_labels_file: dl.txt{}}}")
LINES = {"tr.txt": "a\nb\nc\n", "trl.txt": "neg\npos\nneg\n", "d.txt": "a\n", "dl.txt": "neg\n"}
TREC_REGEX = r"(?P<label>\w+):\S+ (?P<text>.*)"
TREC = ("{{name: trec, type: classification, labels: [DESC, NUM], train_file: train.label, dev_file: dev.label, "
        "label_from: {{regex: '" + TREC_REGEX + "'}}{}}}")
TREC_LINES = {"train.label": "DESC how so ?\nNUM how many ?\n", "dev.label": "DESC how so ?\nNUM:x how many ?\n"}
SPLIT = ("{{name: one, type: classification, labels: [yes, no], train_file: train.tsv, text_columns: [text], "
         "label_column: label, split: {}}}")
SPLIT_USAGE = r"split takes \{dev: fraction, test: fraction, seed: integer\} \(fractions above 0 whose sum is below 1"
QA = "{{name: qa, type: question_answering, train_file: qa.jsonl, dev_file: qa.jsonl{}}}"
QA_ROW = ('{"question": "which fruit ?", "context": "the fruit is plum", '
          '"answers": {"text": ["plum"], "answer_start": [13]}}')
QA_DATA = {"qa.jsonl": f"{QA_ROW}\n{QA_ROW.replace('[13]', '[12]')}\n"}  # line 2: "plum" is not at 12
JOB = {"JOB_DIR": "gs://{bucket}/{row}"}
CLOUD = {"PROJECT_ID": "my-project", "BUCKET_NAME": "my-bucket"}

TABLE: dict[str, Row] = {
    # ---- section 6: numbers, finite and in range -------------------------------------------------------
    "LEARNING_RATE=inf": train(r"LEARNING_RATE='inf' must be a finite number", LEARNING_RATE="inf"),
    "TASK_WEIGHTS=x=inf": train(r"weight for 'demo_sentiment'='inf' must be a finite number",
                                TASK_WEIGHTS="demo_sentiment=inf"),
    "WEIGHT_DECAY=nan": train(r"WEIGHT_DECAY='nan' must be a finite number", WEIGHT_DECAY="nan"),
    "WEIGHT_DECAY<0": train(r"WEIGHT_DECAY=-0.1 must be >= 0", WEIGHT_DECAY="-0.1"),
    "WARMUP_RATIO=1.5": train(r"WARMUP_RATIO=1.5 must be in \[0, 1\)", WARMUP_RATIO="1.5"),
    "SAMPLING_TEMPERATURE=0": train(r"SAMPLING_TEMPERATURE=0.0 must be > 0", SAMPLING_TEMPERATURE="0"),
    "SAMPLING_CAP=0": train(r"SAMPLING_CAP=0 must be a positive integer", SAMPLING_CAP="0"),
    "SAMPLING_CAP=2.5": train(r"SAMPLING_CAP='2.5' is not an integer; it must be a positive integer or empty",
                              SAMPLING_CAP="2.5"),
    "SAMPLING_CAP with round_robin": train(r"SAMPLING_CAP=100 applies to SAMPLING=proportional or temperature, not "
                                           r"SAMPLING=round_robin", SAMPLING_CAP="100", SAMPLING="round_robin"),
    "TASK_WEIGHTING_LR<0": train(r"TASK_WEIGHTING_LR=-1.0 must be > 0", TASK_WEIGHTING_LR="-1"),
    "TASK_WEIGHTS<0": train(r"TASK_WEIGHTS weight for 'demo_sentiment'=-2.0 must be >= 0",
                            TASK_WEIGHTS="demo_sentiment=-2"),
    "UPLOAD_TIMEOUT=0": train(r"UPLOAD_TIMEOUT=0.0 must be > 0", UPLOAD_TIMEOUT="0"),
    "LOG_UPLOAD_SECONDS<0": train(r"LOG_UPLOAD_SECONDS=-5.0 must be > 0", LOG_UPLOAD_SECONDS="-5"),
    "SEED=-1": train(r"SEED=-1 must be in \[0, 4294967295\]", SEED="-1"),
    "SEED=2**32": train(r"SEED=4294967296 must be in \[0, 4294967295\]", SEED=str(2**32)),
    "MAX_SEQ_LENGTH above the demo's": train(r"MAX_SEQ_LENGTH=100000 is more than MODEL_NAME=demo takes "
                                             r"\(128 tokens", MAX_SEQ_LENGTH="100000"),
    "MAX_SEQ_LENGTH above a model's": train(r"MAX_SEQ_LENGTH=4096 is more than MODEL_NAME=.*tiny takes \(128 tokens",
                                            MODEL_NAME="{tiny}", MAX_SEQ_LENGTH="4096"),
    "MAX_SEQ_LENGTH=0": train(r"MAX_SEQ_LENGTH=0 must be a positive integer", MAX_SEQ_LENGTH="0"),
    "LORA_TARGET_MODULES the model lacks": train(
        r"LORA_TARGET_MODULES=query,qkv_proj: the model \(bert\) has no layer named 'qkv_proj'; its layers LoRA can "
        r"wrap are dense, key, .*query, .*value", ADAPTER="lora_per_task", LORA_TARGET_MODULES="query,qkv_proj"),
    "check: LORA_TARGET_MODULES the model lacks": command(
        "check", r"LORA_TARGET_MODULES=qkv_proj: the model \(bert\) has no layer named 'qkv_proj'", ADAPTER="lora",
        LORA_TARGET_MODULES="qkv_proj"),
    # ---- section 8: numbers and places ------------------------------------------------------------------
    "NUM_EPOCHS=inf": train(r"NUM_EPOCHS='inf' must be a finite number", NUM_EPOCHS="inf", MAX_STEPS=""),
    "NUM_EPOCHS=0": train(r"NUM_EPOCHS=0.0 must be > 0", NUM_EPOCHS="0", MAX_STEPS=""),
    "OUTPUT_DIR is a file": train(r"OUTPUT_DIR=.*/afile is a file", {"afile": "x"}, OUTPUT_DIR="{tmp}/afile"),
    "OUTPUT_DIR under a file": train(r"OUTPUT_DIR=.*/afile/out is under .*/afile, which is a file", {"afile": "x"},
                                     OUTPUT_DIR="{tmp}/afile/out"),
    "OUTPUT_DIR read-only": train(r"OUTPUT_DIR=.*/out can't be written: .* is read-only or not writable",
                                  OUTPUT_DIR="{readonly}/out"),
    "LOG_DIR is a file": train(r"LOG_DIR=.*/afile is a file", {"afile": "x"}, LOG_DIR="{tmp}/afile"),
    "LOG_DIR under a file": train(r"LOG_DIR=.*/afile/logs is under", {"afile": "x"}, LOG_DIR="{tmp}/afile/logs"),
    "LOG_DIR read-only": train(r"LOG_DIR=.*/logs can't be written", LOG_DIR="{readonly}/logs"),
    "predict --choices=[]": command("predict --task=demo_category --text=pick --choices=[]",
                                    r"task 'demo_category' is multiple choice: pass --choices with at least two"),
    "export --export_dir is a file": command("export --export_dir={tmp}/afile", r"--export_dir=.*/afile is a file",
                                             {"afile": "x"}),
    "export --export_dir under a file": command("export --export_dir={tmp}/afile/export", r"is under .*/afile",
                                                {"afile": "x"}),
    "job-spec --output under a file": command("job-spec --output={tmp}/afile/spec.yaml",
                                              r"--output=.*/afile/spec.yaml is under .*/afile, which is a file",
                                              {"afile": "x"}, **CLOUD),
    "job-spec --output is a directory": command("job-spec --output={tmp}", r"--output=.* is a directory", **CLOUD),
    "predict-file --output under a file": command(
        "predict-file --task=demo_sentiment --input={tmp}/in.tsv --output={tmp}/afile/out.tsv",
        r"--output .*/afile/out.tsv: the folder .*/afile does not exist", {"afile": "x", "in.tsv": "text\nhi\n"}),
    "predict-file --output is a directory": command(
        "predict-file --task=demo_sentiment --input={tmp}/in.tsv --output={tmp}", r"--output=.* is a directory",
        {"in.tsv": "text\nhi\n"}),
    # ---- section 9: task files ------------------------------------------------------------------------------
    "two tasks with one name": mine(r"tasks.yaml, task #2: field 'name' 'mine' is task #1's name too", "", ""),
    "a built-in task's name": mine(r"tasks.yaml, task #1 \(rte\): field 'name' 'rte' is a built-in task's name; "
                                   r".*'override: true'", task=TASK.replace("mine", "rte"), TASKS="rte"),
    "override with no built-in": mine(r"field 'override' is true but there is no built-in task 'mine'",
                                      ", override: true"),
    "override: ture": mine(r"tasks.yaml, task #1 \(rte\): override='ture' is not a boolean", ", override: ture",
                           task=TASK.replace("mine", "rte"), TASKS="rte"),
    "duplicate labels": mine(r"tasks.yaml, task #1 \(mine\): 'labels' lists a value twice \(yes\)",
                             task=TASK.replace("[yes, no]", "[yes, no, yes]")),
    "duplicate choice labels": mine(r"task #1 \(quiz\): 'labels' lists a value twice \(A\)", ", labels: [A, A]",
                                    task=MC),
    "duplicate tags": mine(r"task #1 \(ner\): 'labels' lists a value twice \(O\)",
                           task=NER.replace("[O, B-PER]", "[O, B-PER, O]")),
    "seq2seq on an encoder-only model": mine(r"task 's2s' is seq2seq, but bert is an encoder-only model; seq2seq "
                                             r"needs an encoder-decoder \(T5", task=S2S, MODEL_NAME="{tiny}"),
    "seq2seq on a decoder-only model": mine(r"task 's2s' is seq2seq, but gpt2 is a decoder-only model; seq2seq "
                                            r"needs an encoder-decoder", task=S2S, MODEL_NAME="{tiny_decoder}"),
    "seq2seq empty target": mine(r"train.tsv:3: the target \('label'\) of task 's2s' is empty; every row needs a "
                                 r"target text", task=S2S, data={"train.tsv": "text\tlabel\ngood\tyes\nbad\t\n"}),
    "target_template without {label}": mine(r"task #1 \(s2s\): 'target_template' \('it is x'\) must contain "
                                            r"\{label\}", ", target_template: 'it is x', labels: [yes, no]", task=S2S),
    "header: ture": mine(r"tasks.yaml, task #1 \(mine\): header='ture' is not a boolean", ", header: ture"),
    "in_average: 3": mine(r"in_average=3 is not a boolean", ", in_average: 3"),
    "conll_columns of words": mine(r"task #1 \(ner\): conll_columns='a' is not an integer",
                                   ", conll_columns: [a, b]", task=NER),
    "label_column a list": mine(r"field 'label_column' takes one value \(a text\), not a list",
                                task=TASK.replace("label_column: label", "label_column: [label, text]")),
    "text_columns a mapping": mine(r"field 'text_columns' takes a list of texts, not a mapping",
                                   task=TASK.replace("[text]", "{{text: 1}}")),
    "train_file a list": mine(r"field 'train_file' takes one value", task=TASK.replace("train.tsv", "[train.tsv]")),
    "unknown type": mine(r"type 'classify' is not allowed; choose one of", task=TASK.replace(": classification",
                                                                                          ": classify")),
    "another kind's field": mine(r"field\(s\) choice_columns are not allowed for a classification task",
                                 ", choice_columns: [a, b]"),
    "missing label_column": mine(r"is missing the field\(s\) label_column",
                                 task=TASK.replace("label_column: label, ", "")),
    "unknown main_metric": mine(r"main_metric 'auc' is not a metric of this classification task",
                                ", main_metric: auc"),
    "unknown encoding": mine(r"encoding 'klingon' is unknown", ", encoding: klingon"),
    "a name with a space": mine(r"name may only contain letters", task=TASK.replace("mine", "'my task'")),
    "TASKS_FILE missing": train(r"TASKS_FILE .*/nope.yaml does not exist", TASKS_FILE="{tmp}/nope.yaml"),
    "TASKS_FILE not YAML": train(r"is not valid UTF-8 YAML/JSON", {"tasks.yaml": "tasks: [\n"},
                                 TASKS_FILE="{tmp}/tasks.yaml"),
    "TASKS_FILE without tasks": train(r"must contain a non-empty 'tasks:' list", {"tasks.yaml": "task: []\n"},
                                      TASKS_FILE="{tmp}/tasks.yaml"),
    "predict --choices on classification": command(
        "predict --task=demo_sentiment --text=hi --choices=[a,b]",
        r"--choices is for multiple-choice tasks; task 'demo_sentiment' is classification"),
    # ---- data files with bad rows ----------------------------------------------------------------------------
    "QA answer_start off its text": mine(r"qa\.jsonl:2: answer 'plum' is not at answer_start 12 of its context",
                                         task=QA, data=QA_DATA),
    "QA doc_stride >= MAX_SEQ_LENGTH": mine(r"task 'qa': doc_stride 128 must be below MAX_SEQ_LENGTH=64",
                                            ", doc_stride: 128", task=QA, data={"qa.jsonl": QA_ROW + "\n"},
                                            MAX_SEQ_LENGTH="64"),
    "QA question longer than MAX_SEQ_LENGTH": mine(
        r"task 'qa': the question 'which fruit which fruit.*' has \d+ tokens, which leaves no room for its context "
        r"in MAX_SEQ_LENGTH=32", ", doc_stride: 8", task=QA,
        data={"qa.jsonl": QA_ROW.replace("which fruit ?", "which fruit " * 20) + "\n"}, MAX_SEQ_LENGTH="32"),
    "wrong column count": mine(r"train.tsv:3: expected 2 columns \(text, label\), found 3",
                               data={"train.tsv": "text\tlabel\na\tyes\nb\tno\textra\n"}),
    "label outside the list": mine(r"label 'maybe' of task 'mine' is not in its label list \(yes, no\)",
                                   data={"train.tsv": "text\tlabel\na\tmaybe\n"}),
    "empty split": mine(r"split file .*/train.tsv has no rows", data={"train.tsv": "text\tlabel\n"}),
    "not UTF-8": mine(r"train.tsv:3: not valid utf-8", data={"train.tsv": b"text\tlabel\na\tyes\n\xff\tno\n"}),
    "bad JSONL line": mine(r"train.jsonl:2: not valid JSON", task=TASK.replace("train.tsv", "train.jsonl"),
                           data={"train.jsonl": '{"text": "a", "label": "yes"}\n{"text": \n'}),
    "missing data file": mine(r"data file .*/dev.tsv not found", task=TASK.replace("dev.tsv", "gone/dev.tsv")),
    "non-numeric regression target": train(
        r"regression target 'high' of task 'stsb' is not a finite number",
        {"glue/stsb/train.tsv": STSB_HEADER + "0\tg\tf\ty\t0\ts\ts\ta\tb\thigh\n",
         "glue/stsb/dev.tsv": STSB_HEADER + "0\tg\tf\ty\t0\ts\ts\ta\tb\t1.0\n"}, TASKS="stsb", DATA_DIR="{tmp}/glue"),
    "DATA_DIR without the task": train(r"data file .*/rte/train.tsv not found", TASKS="rte", DATA_DIR="{tmp}"),
    # ---- other settings, from the environment, .env and flags -----------------------------------------------
    "BATCH_SIZE=0": train(r"BATCH_SIZE=0 must be a positive integer", BATCH_SIZE="0"),
    "BATCH_SIZE=abc": train(r"BATCH_SIZE='abc' is not an integer", BATCH_SIZE="abc"),
    "MAX_STEPS=0": train(r"MAX_STEPS=0 must be a positive integer, or -1", MAX_STEPS="0"),
    "MAX_STEPS=1.5": train(r"MAX_STEPS='1.5' is not an integer", MAX_STEPS="1.5"),
    "SAVE_TOTAL_LIMIT=0": train(r"SAVE_TOTAL_LIMIT=0 must be a positive integer", SAVE_TOTAL_LIMIT="0"),
    "EVAL_STEPS=-1": train(r"EVAL_STEPS=-1 must be a positive integer", EVAL_STEPS="-1"),
    "SAMPLING=random": train(r"SAMPLING='random' is not allowed; choose one of: proportional", SAMPLING="random"),
    "TASK_WEIGHTING=learned": train(r"TASK_WEIGHTING='learned' is not allowed", TASK_WEIGHTING="learned"),
    "weights with uncertainty": train(r"TASK_WEIGHTS is for TASK_WEIGHTING=static", TASK_WEIGHTING="uncertainty",
                                      TASK_WEIGHTS="demo_sentiment=2"),
    "malformed TASK_WEIGHTS": train(r"TASK_WEIGHTS entry 'demo_sentiment:2' is malformed",
                                    TASK_WEIGHTS="demo_sentiment:2"),
    "TASK_WEIGHTS for no task": train(r"TASK_WEIGHTS names nope, which is not in TASKS", TASK_WEIGHTS="nope=1"),
    "SELECT_BEST=best": train(r"SELECT_BEST='best' is not allowed", SELECT_BEST="best"),
    "GROUP_BY_LENGTH=maybe": train(r"GROUP_BY_LENGTH='maybe' is not a boolean", GROUP_BY_LENGTH="maybe"),
    "PRECISION=fp8": train(r"PRECISION='fp8' is not allowed", PRECISION="fp8"),
    "QUANTIZE on CPU": train(r"QUANTIZE=4bit needs a CUDA GPU \(bitsandbytes' k-bit kernels\) and this machine has "
                             r"none", QUANTIZE="4bit", ADAPTER="lora"),
    "QUANTIZE=8bit on CPU": train(r"QUANTIZE=8bit needs a CUDA GPU", QUANTIZE="8bit", ADAPTER="lora_per_task"),
    "QUANTIZE without an adapter": train(r"QUANTIZE=4bit quantizes a frozen base: set ADAPTER=lora or lora_per_task",
                                         QUANTIZE="4bit"),
    "QUANTIZE=2bit": train(r"QUANTIZE='2bit' is not allowed", QUANTIZE="2bit", ADAPTER="lora"),
    "FSDP with QUANTIZE": train(r"FSDP=true with QUANTIZE=4bit is not supported", FSDP="true", QUANTIZE="4bit",
                                ADAPTER="lora"),
    "FSDP with an adapter": train(r"FSDP=true with ADAPTER=lora is not supported", FSDP="true", ADAPTER="lora"),
    "GRADIENT_CHECKPOINTING with lora_per_task in all_tasks steps": train(
        r"GRADIENT_CHECKPOINTING=true with ADAPTER=lora_per_task and SAMPLING=all_tasks is not supported",
        GRADIENT_CHECKPOINTING="true", ADAPTER="lora_per_task", SAMPLING="all_tasks"),
    "FSDP in one process": train(r"FSDP=true shards the model across processes, and this is one process; launch it "
                                 r"with torchrun", FSDP="true"),
    "REPORT_TO=neptune": train(r"REPORT_TO='neptune' is not allowed", REPORT_TO="neptune"),
    "REPORT_TO=none,tensorboard": train(r"'none' turns every tracker off", REPORT_TO="none,tensorboard"),
    "unknown task": train(r"unknown task\(s\) nope in TASKS; available: ", TASKS="rte,nope"),
    "a task twice": train(r"TASKS lists a task twice", TASKS="demo_sentiment,demo_sentiment"),
    "TASKS=,": train(r"TASKS is empty; give a comma-separated list", TASKS=","),
    "unloadable MODEL_NAME": train(r"MODEL_NAME='no-such-org/no-such-model' can't be loaded",
                                   MODEL_NAME="no-such-org/no-such-model"),
    "MODEL_NAME an empty folder": train(r"MODEL_NAME='.*/empty' can't be loaded", {"empty/.keep": ""},
                                        MODEL_NAME="{tmp}/empty"),
    "RESUME not a checkpoint": train(r"RESUME='.*/nothing' is not a checkpoint directory", RESUME="{tmp}/nothing"),
    "ENV_FILE missing": train(r"ENV_FILE=.*/missing.env does not exist", ENV_FILE="{tmp}/missing.env"),
    ".env with a bad line": train(r"\.env:2: expected NAME=value", {".env": "SEED=1\nthis is not a setting\n"}),
    ".env with a bad number": train(r"SEED='zero' is not an integer", {".env": "SEED=zero\n"}),
    ".env with a NUL byte": train(r"\.env:2: the line holds a NUL byte", {".env": "SEED=1\nMAX_STEPS=2\0\n"}),
    "ENV_FILE with a NUL byte": train(r"bad.env:1: the line holds a NUL byte", {"bad.env": "SEED=\0\n"},
                                      ENV_FILE="{tmp}/bad.env"),
    "--batch_size=0": train(r"BATCH_SIZE=0 must be a positive integer", None, "--batch_size=0"),
    "--seed=-5": train(r"SEED=-5 must be in \[0, 4294967295\]", None, "--seed=-5"),
    "--learning_rate=inf": train(r"LEARNING_RATE='?inf'? must be a finite number", None, "--learning_rate=inf"),
    "unknown flag": train(r"unknown flag\(s\) --batchsize; allowed: --model_name", None, "--batchsize=3"),
    # ---- JOB_DIR: nothing may reach the bucket ------------------------------------------------------------
    "JOB_DIR + LEARNING_RATE=inf": train(r"LEARNING_RATE='inf' must be a finite number", LEARNING_RATE="inf", **JOB),
    "JOB_DIR + SEED=-1": train(r"SEED=-1 must be in", SEED="-1", **JOB),
    "JOB_DIR + duplicate labels": mine(r"'labels' lists a value twice", task=TASK.replace("[yes, no]", "[no, no]"),
                                       **JOB),
    "JOB_DIR + a bad row": mine(r"label 'maybe' of task 'mine' is not in its label list",
                                data={"train.tsv": "text\tlabel\na\tmaybe\n"}, **JOB),
    "JOB_DIR + OUTPUT_DIR a file": train(r"OUTPUT_DIR=.*/afile is a file", {"afile": "x"}, OUTPUT_DIR="{tmp}/afile",
                                         **JOB),
    "JOB_DIR + MAX_SEQ_LENGTH": train(r"MAX_SEQ_LENGTH=512 is more than MODEL_NAME=demo takes",
                                      MAX_SEQ_LENGTH="512", **JOB),
    "JOB_DIR + RESUME of a missing bucket checkpoint": train(r"RESUME=gs://.*/checkpoint-5 does not exist",
                                                             RESUME="gs://{bucket}/{row}-else/checkpoint-5", **JOB),
    "JOB_DIR not gs://": train(r"'s3://bucket/run' is not a bucket URI; it must start with gs://",
                               JOB_DIR="s3://bucket/run"),
    # ---- predict, predict-file, export, evaluate, job-spec, report, check, settings ------------------------
    "predict a task the model lacks": command("predict --task=nope --text=x", r"no export of task 'nope'|'nope'"),
    "predict --model_dir junk": command("predict --task=demo_sentiment --text=x --model_dir={tmp}/junk",
                                        r"junk", {"junk/file.txt": "x"}),
    "predict --max_seq_length=1000": command("predict --task=demo_sentiment --text=x --max_seq_length=1000",
                                             r"MAX_SEQ_LENGTH=1000 is more than the model in .*demo_sentiment takes "
                                             r"\(128 tokens"),
    "predict stdin bad JSON": command("predict --task=demo_sentiment --text=-", r"stdin line 2: not valid JSON",
                                      stdin="a fine film\n{broken\n"),
    "predict stdin choices on classification": command(
        "predict --task=demo_sentiment --text=-", r"--choices is for multiple-choice tasks",
        stdin='{"text": "a", "choices": ["x", "y"]}\n'),
    "predict text_pair count": command("predict --task=demo_similarity --text=[a,b] --text_pair=[c]",
                                       r"--text has 2 item\(s\) but --text_pair has 1"),
    "predict-file missing input": command("predict-file --task=demo_sentiment --input={tmp}/none.tsv "
                                          "--output={tmp}/out.tsv", r"none.tsv"),
    "predict-file --max_seq_length": command("predict-file --task=demo_sentiment --input={tmp}/in.tsv "
                                             "--output={tmp}/out.tsv --max_seq_length=999",
                                             r"MAX_SEQ_LENGTH=999 is more than", {"in.tsv": "text\nhi\n"}),
    "export --model_dir missing": command("export --model_dir={tmp}/none", r"no trained multitask model in"),
    # ---- issue 18, data loss: an export replaces only a previous export; predict-file never its input --------
    "export --export_dir=.": command("export --export_dir=.", r"--export_dir=\. is the working folder"),
    "export --export_dir=OUTPUT_DIR": command("export --export_dir={run}", r"--export_dir=.* is OUTPUT_DIR="),
    "export --export_dir holding OUTPUT_DIR": command("export --export_dir={run}/..", r"holds OUTPUT_DIR="),
    "export --export_dir a checkpoint": command("export --export_dir={run}/checkpoint-12",
                                                r"is .*checkpoint-12, which the export must leave alone"),
    "export --export_dir inside the logs": command("export --export_dir={run}/logs/export",
                                                   r"lies inside .*logs, which the export must leave alone"),
    "export --export_dir with other files": command("export --export_dir={tmp}/mine",
                                                    r"mine is not empty and is not a previous export \(.*notes.txt",
                                                    {"mine/notes.txt": "mine"}),
    "predict-file --output=--input": command("predict-file --task=demo_sentiment --input={tmp}/in.tsv "
                                             "--output={tmp}/in.tsv", r"--output=.*in.tsv would overwrite --input=",
                                             {"in.tsv": "text\nhi\n"}),
    "predict-file --output.partial=--input": command("predict-file --task=demo_sentiment --input={tmp}/o.tsv.partial "
                                                     "--output={tmp}/o.tsv", r"would overwrite --input=",
                                                     {"o.tsv.partial": "text\nhi\n"}),
    "evaluate --split=train": command("evaluate --split=train", r"--split='train' is not allowed"),
    "evaluate a demo test split": command("evaluate --split=test", r"offline demo task"),
    "evaluate --max_seq_length": command("evaluate --split=dev --max_seq_length=4000", r"MAX_SEQ_LENGTH=4000 is more"),
    "evaluate OUTPUT_DIR under a file": command("evaluate --split=dev --model_dir={run}", r"OUTPUT_DIR=.* is under",
                                                {"afile": "x"}, OUTPUT_DIR="{tmp}/afile/run"),
    "an unknown command": command("nope --x=1", r"unknown command 'nope'; choose one of train, launch, check"),
    "job-spec without PROJECT_ID": command("job-spec --output={tmp}/spec.yaml", r"PROJECT_ID is not set"),
    "report without logs": command("report", r"log", OUTPUT_DIR="{tmp}/nothing"),
    "check --tasks=nope": command("check --tasks=nope", r"unknown task\(s\) nope"),
    "check MAX_SEQ_LENGTH": command("check --max_seq_length=129", r"MAX_SEQ_LENGTH=129 is more than MODEL_NAME=demo"),
    "settings SEED=-1": command("settings", r"SEED=-1 must be in", SEED="-1"),
    # ---- issue 18: gcloud settings are checked before gcloud starts, and never reach a shell ------------------
    "create-bucket in no region": command("create-bucket", r"REGION='mars-central1' is not a Cloud Storage location; "
                                          r"use a region such as us-central1", REGION="mars-central1", **CLOUD),
    "create-bucket PROJECT_ID with a quote": command(
        "create-bucket", r"PROJECT_ID=\"x'; touch .*canary; echo '\" is not valid: a project ID has 6-30",
        PROJECT_ID="x'; touch {tmp}/canary; echo '", BUCKET_NAME="my-bucket", REGION="us-central1"),
    "cloud-status REGION with $(...)": command(
        "cloud-status", r"REGION='us-central1\$\(touch .*canary\)' is not valid: use a region like us-central1",
        REGION="us-central1$(touch {tmp}/canary)", JOB_ID="123", PROJECT_ID="my-project"),
    "cloud-logs JOB_ID with backticks": command("cloud-logs", r"JOB_ID='1`touch .*canary`' is not valid: use the job's "
                                                r"number", JOB_ID="1`touch {tmp}/canary`", PROJECT_ID="my-project"),
    "cloud-status without JOB_ID": command("cloud-status", r"JOB_ID not set and no job submitted from here yet",
                                           PROJECT_ID="my-project"),
    "cloud-train JOB_NAME with a newline": command("cloud-train", r"JOB_NAME='a\\ntouch .*canary' is not valid",
                                                   JOB_NAME="a\ntouch {tmp}/canary", **CLOUD),
    "cloud-train PROJECT_ID with a double quote": command(
        "cloud-train", r"PROJECT_ID='x\"; touch .*' is not valid", PROJECT_ID='x"; touch {tmp}/canary; echo "',
        BUCKET_NAME="my-bucket"),
    "cloud-train IMAGE_TAG with a semicolon": command("cloud-train", r"IMAGE_TAG='a; touch .*canary' is not valid",
                                                      IMAGE_TAG="a; touch {tmp}/canary", **CLOUD),
    # ---- issue 18, section 3: one line owed ---------------------------------------------------------------
    "report --output under a file": command("report --output={tmp}/afile/report.html",
                                            r"--output=.*/afile/report.html is under .*/afile, which is a file",
                                            {"afile": "x"}),
    "report --output is a folder": command("report --output={tmp}/folder", r"--output=.*/folder is a directory",
                                           {"folder/keep.txt": "x"}),
    "a task name of 200 characters": mine(r"task #1 \(a{200}\): name is 200 characters long; at most 64",
                                          task=TASK.replace("mine", "a" * 200)),
    "a task named --help": mine(r"task #1 \(--help\): name must not start with '-'",
                                task=TASK.replace("mine", "'--help'")),
    "a task named -": mine(r"task #1 \(-\): name must not start with '-'", task=TASK.replace("mine", "'-'")),
    "TASKS=--help": train(r"unknown task\(s\) --help in TASKS", TASKS="--help"),
    "--tasks=-": train(r"unknown task\(s\) - in TASKS", None, "--tasks=-"),
    "predict stdin not UTF-8": command("predict --task=demo_sentiment --text=-", r"stdin line 2: not valid UTF-8",
                                       stdin="a fine film\n\udcff\udcfebinary\n"),
    "predict stdin with a NUL": command("predict --task=demo_sentiment --text=-", r"stdin line 2: contains a NUL",
                                        stdin="a fine film\nbin\x00ary\n"),
    "predict stdin JSON with a NUL": command("predict --task=demo_sentiment --text=-",
                                             r"stdin line 1: a text contains a NUL", stdin='{"text": "a\\u0000b"}\n'),
    "predict without --text": command("predict --task=demo_sentiment", r"predict needs --text"),
    "predict --text_pair on a single-text task": command("predict --task=demo_sentiment --text=hi --text_pair=there",
                                                         r"--text_pair is for sentence-pair tasks; task "
                                                         r"'demo_sentiment' takes one text"),
    "predict stdin text_pair on a single-text task": command(
        "predict --task=demo_sentiment --text=-", r"--text_pair is for sentence-pair tasks",
        stdin='{"text": "a", "text_pair": "b"}\n'),
    "TASKS with a trailing comma": train(r"TASKS='demo_sentiment,demo_similarity,' has an empty entry",
                                         TASKS="demo_sentiment,demo_similarity,"),
    "a NUL in a tsv text": mine(r"train.tsv:3: a text contains a NUL character",
                                data={"train.tsv": "text\tlabel\na\tyes\nb\x00c\tno\n"}),
    "a NUL in a JSONL text": mine(r"train.jsonl:2: a text contains a NUL character",
                                  task=TASK.replace("train.tsv", "train.jsonl"),
                                  data={"train.jsonl": '{"text": "a", "label": "yes"}\n{"text": "b\\u0000", '
                                                       '"label": "no"}\n'}),
    "every task weight 0": train(r"TASK_WEIGHTS gives every task weight 0", TASKS="demo_sentiment,demo_similarity",
                                 TASK_WEIGHTS="demo_sentiment=0,demo_similarity=0"),
    # ---- the first hour's data shapes: parallel files, label_from, split ----------------------------------
    "parallel files: fewer labels than texts": mine(r"tr\.txt has 3 lines but its labels file .*trl\.txt has 2",
                                                    task=PARALLEL, data={**LINES, "trl.txt": "neg\npos\n"}),
    "parallel files: more labels than texts": mine(r"d\.txt has 1 lines but its labels file .*dl\.txt has 3",
                                                   task=PARALLEL, data={**LINES, "dl.txt": "neg\n" * 3}),
    "a labels file without its text file": mine(r"test_labels_file is the labels of test_file, which is missing; give "
                                                r"both", ", test_labels_file: t.txt", task=PARALLEL, data=LINES),
    "label_from: an invalid regex": mine(
        r"label_from regex '\(\?P<label>\\w\+' is not a valid regular expression \(missing \)",
        task=TREC.replace(TREC_REGEX, r"(?P<label>\w+"), data=TREC_LINES),
    "label_from: no named groups": mine(
        r"has no named group\(s\) \(\?P<text>\.\.\.\), \(\?P<label>\.\.\.\); it needs one per text",
        task=TREC.replace(TREC_REGEX, r"(\w+):(.*)"), data=TREC_LINES),
    "label_from: a line that does not match": mine(
        r"dev\.label:2: the line does not match task 'trec''s label_from regex",
        task=TREC.replace(TREC_REGEX, r"(?P<label>[A-Z]+) (?P<text>.*)"), data=TREC_LINES),
    **{"split: " + value.replace("{{", "{").replace("}}", "}"):
       mine(SPLIT_USAGE, task=SPLIT.replace("{}", value, 1) + "{}")
       for value in ("{{dev: 0}}", "{{dev: 0.5, test: 0.5}}", "{{dev: -0.1}}", "{{test: 0.1}}",
                     "{{dev: 0.1, seed: x}}", "{{dev: 0.1, tset: 0.1}}", "0.1")},
    "split with a dev_file too": mine(r"split draws dev and test from train_file; leave out dev_file",
                                      task=SPLIT.replace("{}", "{{dev: 0.2, test: 0.1}}, dev_file: dev.tsv", 1)
                                      + "{}"),
}

DEFAULTS = {"OUTPUT_DIR": "{tmp}/out", "MAX_STEPS": "2", "BATCH_SIZE": "4"}


def test_the_table_is_big_enough():
    assert len(TABLE) >= 60


# ---- fixtures ------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def bucket(tmp_path_factory):
    """One emulated bucket for every JOB_DIR row (each row its own prefix): (STORAGE_EMULATOR_HOST, bucket)."""
    emulator = GcsEmulator(tmp_path_factory.mktemp("bad-input-gcs"))
    emulator.start()
    with pytest.MonkeyPatch.context() as patch:
        emulator.patch_env(patch)
        from trainer.storage.gcs import make_client

        client = make_client()
        client.create_bucket("bad-input")
        yield emulator.url, client.bucket("bad-input")
    emulator.stop()


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    from tests.tiny import save_tiny_pretrained

    return save_tiny_pretrained(tmp_path_factory.mktemp("tiny-model") / "tiny")


@pytest.fixture(scope="module")
def tiny_decoder_model(tmp_path_factory):
    from tests.tiny import save_tiny_gpt2

    return save_tiny_gpt2(tmp_path_factory.mktemp("tiny-decoder") / "gpt2")


MODELS = {"tiny": "tiny_model", "tiny_decoder": "tiny_decoder_model"}  # a row's MODEL_NAME placeholder: its fixture


def read_only_place(tmp_path: Path) -> str:
    """A directory nobody may write in: chmod 0555 for a normal user; for root (whom chmod doesn't stop), a
    read-only file system such as /sys."""
    if os.geteuid() != 0:
        place = tmp_path / "readonly"
        place.mkdir()
        place.chmod(0o555)
        return str(place)
    for candidate in ("/sys", "/proc/sys"):
        try:
            os.mkdir(os.path.join(candidate, ".write-probe"))
        except OSError:
            return candidate
        os.rmdir(os.path.join(candidate, ".write-probe"))
    pytest.skip("running as root with no read-only file system to write to")


def snapshot(root: Path) -> dict[str, tuple[int, int]]:
    """Every path under `root`, with the size and modification time of each file (a folder's own time changes
    when the writability probe makes and removes a folder in it: that leaves nothing)."""
    found = {}
    for path in [root, *root.rglob("*")]:
        stat = path.lstat()
        found[str(path.relative_to(root))] = (stat.st_size, stat.st_mtime_ns) if path.is_file() else (0, 0)
    return found


def prepare(name: str, row: Row, tmp_path: Path, run: Path, models: dict[str, Path], bucket_name: str) -> Row:
    """The row with its placeholders filled in and its files written."""
    values = {"tmp": str(tmp_path), "run": str(run), "bucket": bucket_name, "row": re.sub(r"\W+", "-", name),
              **{key: str(path) for key, path in models.items()}}
    text = " ".join([*row.args, *row.env.values()])
    if "{readonly}" in text:
        values["readonly"] = read_only_place(tmp_path)

    def fill(value: str) -> str:
        return re.sub(r"\{(\w+)\}", lambda m: values.get(m.group(1), m.group(0)), value)

    for relative, content in row.files.items():
        path = tmp_path / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        (path.write_bytes if isinstance(content, bytes) else path.write_text)(content)
    env = {k: fill(v) for k, v in {**DEFAULTS, **row.env}.items()}
    return Row(tuple(fill(a) for a in row.args), env, row.error, row.files, row.stdin)


def assert_one_error_line(result, error: str) -> None:
    everything = result.stdout + result.stderr
    assert "Traceback" not in everything, everything[-3000:]
    assert result.returncode != 0, everything[-3000:]
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr[-3000:]
    assert re.search(error, lines[0]), lines[0]


# ---- the table -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(TABLE))
def test_bad_input(name, tmp_path, forked_cli, exported_run, bucket, request):
    row = TABLE[name]
    run_dir = exported_run[0]
    models = {key: request.getfixturevalue(fixture) for key, fixture in MODELS.items() if f"{{{key}}}" in str(row.env)}
    host, gcs_bucket = bucket
    row = prepare(name, row, tmp_path, run_dir, models, gcs_bucket.name)
    env = {**row.env, "STORAGE_EMULATOR_HOST": host} if "JOB_DIR" in row.env else row.env
    before, run_before = snapshot(tmp_path), snapshot(run_dir)

    result = forked_cli.run(*row.args, env=cli_environ(env), cwd=tmp_path, stdin=row.stdin)

    assert_one_error_line(result, row.error)
    assert snapshot(tmp_path) == before, "bad input must write nothing"
    assert snapshot(run_dir) == run_before, "bad input must not touch the trained run"
    for setting in ("OUTPUT_DIR", "LOG_DIR"):
        place = Path(row.env.get(setting, tmp_path / "out"))
        if place.is_relative_to(tmp_path) and str(place.relative_to(tmp_path)) not in before:
            assert not place.exists(), f"{setting} {place} was created"
    if "JOB_DIR" in row.env:
        assert [b.name for b in gcs_bucket.client.list_blobs(gcs_bucket.name)] == [], "nothing may reach the bucket"


@pytest.mark.parametrize("name", ["SEED=-1", "OUTPUT_DIR under a file", "header: ture",
                                  "predict --choices on classification"])
def test_the_forked_runner_is_faithful(name, tmp_path, forked_cli, exported_run, bucket):
    """The same rows as true `python -m trainer` subprocesses: the same exit code, stdout and stderr."""
    row = prepare(name, TABLE[name], tmp_path, exported_run[0], {}, bucket[1].name)
    forked = forked_cli.run(*row.args, env=cli_environ(row.env), cwd=tmp_path, stdin=row.stdin)
    real = run_cli(*row.args, env=row.env, cwd=tmp_path)
    assert_one_error_line(real, row.error)
    assert (forked.returncode, forked.stdout, forked.stderr) == (real.returncode, real.stdout, real.stderr)


def test_a_3000_word_text_is_predicted_from_the_flag_and_from_stdin(tmp_path, forked_cli, exported_run):
    """fire's parser runs out of memory on a 3,000-word value: --text takes it as it is, and --text=- reads it."""
    text = " ".join(["word"] * 3000)
    env = cli_environ({"OUTPUT_DIR": str(exported_run[0])})
    for args, stdin in ((("--text=" + text,), ""), (("--text=-",), text + "\n")):
        result = forked_cli.run("predict", "--task=demo_sentiment", *args, env=env, cwd=tmp_path, stdin=stdin)
        assert result.returncode == 0, result.stderr[-2000:]
        (line,) = result.stdout.splitlines()
        assert json.loads(line)["input"]["text"] == text
    for text in ("hello, world", "1e5"):  # fire would make two texts of the first and 100000.0 of the second
        result = forked_cli.run("predict", "--task=demo_sentiment", f"--text={text}", env=env, cwd=tmp_path)
        assert [json.loads(line)["input"]["text"] for line in result.stdout.splitlines()] == [text], result.stderr


def test_a_nul_in_a_predict_file_input_is_refused_by_its_line(tmp_path, forked_cli, exported_run):
    """predict-file's bar has started when the row comes up, so the error is the last line rather than the only one;
    no output is left behind."""
    (tmp_path / "in.tsv").write_text("text\nhi\nb\x00c\n")
    result = forked_cli.run("predict-file", "--task=demo_sentiment", f"--input={tmp_path / 'in.tsv'}",
                            f"--output={tmp_path / 'out.tsv'}", env=cli_environ({"OUTPUT_DIR": str(exported_run[0])}),
                            cwd=tmp_path)
    assert result.returncode != 0 and "Traceback" not in result.stderr, result.stderr[-2000:]
    assert re.search(r"^error: .*in.tsv:3: a text contains a NUL character", result.stderr.splitlines()[-1])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.tsv"]


# ---- the parts behind the rows ---------------------------------------------------------------------------------


def test_max_positions_reads_the_config_and_the_tokenizer():
    import transformers

    from tests.tiny import decoder_configs, encoder_configs
    from trainer.model.positions import max_positions

    configs = {**encoder_configs(), **decoder_configs()}
    assert max_positions(configs["bert"], None) == 130
    assert max_positions(configs["roberta"], None) == 130 - 2  # positions start after padding_idx (1)
    assert max_positions(configs["gpt2"], None) == 130  # n_positions
    tokenizer = type("Tokenizer", (), {"model_max_length": 64})()
    assert max_positions(configs["bert"], tokenizer) == 64
    assert max_positions(None, type("Unbounded", (), {"model_max_length": int(1e30)})()) is None
    assert max_positions(transformers.DebertaV2Config(position_biased_input=False), None) is None


def test_override_replaces_a_built_in_task_and_is_documented(tmp_path):
    from trainer.tasks.declare import describe_tasks, resolve_tasks

    for name, content in tasks_file(", override: true", task=TASK.replace("mine", "rte")).items():
        (tmp_path / name).write_text(content)
    (task,) = resolve_tasks(("rte",), str(tmp_path / "tasks.yaml"))
    assert task.override and task.labels == ("yes", "no") and task.train_file == str(tmp_path / "train.tsv")
    assert re.search(r"^  override +true/false: this task replaces the built-in task", describe_tasks(), re.M)

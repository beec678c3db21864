"""seq2seq (text to text on T5/BART): the shared encoder-decoder, the scorer by hand, training, generation in
evaluation, save/reload, export, predict, resume and DDP, all on tiny random models built offline."""

import csv
import json

import pytest
import torch
import transformers
from safetensors.torch import load_file

from trainer.errors import UserError
from trainer.model.modeling import MultitaskModel
from trainer.outputs.export import export_tasks
from trainer.tasks.kinds import KINDS
from trainer.tasks.spec import TaskSpec
from trainer.train import train

from .test_training import straight_and_resumed
from .tiny import ROOT, cli_environ, decoder_configs, encoder_configs, save_tiny_t5, settings_of, t5_tokenizer

SEQ2SEQ = KINDS["seq2seq"]
S2S_DEFAULTS = {f.name: f.default for f in SEQ2SEQ.fields}


def s2s_task(name: str = "s2s", **options) -> TaskSpec:
    return TaskSpec(name, "seq2seq", {**S2S_DEFAULTS, "source_column": ("sentence",), "target_column": "start",
                                      **options})


CLS = TaskSpec("cls", "classification", {"text_columns": ("sentence",), "label_column": "label",
                                         "labels": ("0", "1"), "label_names": ()})
NER = TaskSpec("ner", "token_classification", {"labels": ("O", "B", "I")})
SENTIMENT = {"target_template": "{label}", "label_names": ("negative", "positive"), "max_target_length": 16}


# ---- the scorer, by hand ----------------------------------------------------------------------------------


def test_generated_strings_scored_by_hand():
    task = s2s_task()
    predicted = ["the cat sat on the mat", "hello world", "a b"]
    targets = ["the cat sat on a mat", "hello world", "c d"]
    metrics = SEQ2SEQ.compute_metrics(task, predicted, targets)
    assert metrics["exact_match"] == pytest.approx(1 / 3)
    # ROUGE-L: LCS "the cat sat on mat" = 5 of 6 tokens each way (F 5/6); 1; 0
    assert metrics["rougeL"] == pytest.approx((5 / 6 + 1 + 0) / 3)
    assert metrics["rouge1"] == pytest.approx((5 / 6 + 1 + 0) / 3)
    # bigrams: 3 of 5 shared (the cat, cat sat, sat on): F 0.6; 1; 0
    assert metrics["rouge2"] == pytest.approx((0.6 + 1 + 0) / 3)
    assert 0 < metrics["bleu"] < 1 and "accuracy" not in metrics


def test_accuracy_maps_generated_text_back_to_labels():
    task = s2s_task(target_template="it was {label}", label_names=("bad", "good"))
    assert SEQ2SEQ.label_targets(task) == ["it was bad", "it was good"]
    metrics = SEQ2SEQ.compute_metrics(task, ["it was bad", "it was good", "it was", "nonsense"],
                                      ["it was bad", "it was bad", "it was good", "nonsense"])
    # right, wrong, no label, and a target that is no label's text never counts as right
    assert metrics["accuracy"] == pytest.approx(1 / 4)
    assert SEQ2SEQ.default_metric(task) == "accuracy"
    assert SEQ2SEQ.default_metric(s2s_task(max_target_length=8)) == "exact_match"
    assert SEQ2SEQ.default_metric(s2s_task(max_target_length=64)) == "rougeL"


def test_targets_are_padded_with_minus_100_per_batch_and_templates_write_labels():
    tokenizer = t5_tokenizer()
    task = s2s_task(prefix="first words: ")
    row = SEQ2SEQ.normalise(task, {"sentence": "what a film", "start": "what a"}, "x:2")
    assert row == {"source": "first words: what a film", "target": "what a"}
    encoded = SEQ2SEQ.tokenize({"source": [row["source"], "b"], "target": ["what a", "b"]}, task, tokenizer, 32)
    batch = SEQ2SEQ.collate([{k: v[i] for k, v in encoded.items()} for i in range(2)], tokenizer, None)
    longest = max(len(ids) for ids in encoded["labels"])
    assert batch["labels"].shape == (2, longest)  # the batch's longest target, no fixed length
    assert batch["labels"][1, len(encoded["labels"][1]):].eq(-100).all()
    assert encoded["labels"][0][-1] == tokenizer.eos_token_id
    sentiment = s2s_task(**SENTIMENT, target_column="label")
    assert SEQ2SEQ.normalise(sentiment, {"sentence": "x", "label": "1"}, "x:2")["target"] == "positive"
    pair = s2s_task(source_column=("sentence1", "sentence2"), prefix="stsb ", target_column="score")
    row = SEQ2SEQ.normalise(pair, {"sentence1": "a", "sentence2": "b", "score": 3.799999952316284}, "x:2")
    assert row == {"source": "stsb sentence1: a sentence2: b", "target": "3.8"}


def test_seq2seq_refuses_encoder_only_and_decoder_only_models():
    tokenizer = t5_tokenizer()
    with pytest.raises(UserError, match="bert is an encoder-only model; seq2seq needs an encoder-decoder"):
        SEQ2SEQ.check_model(s2s_task(), encoder_configs()["bert"], tokenizer)
    with pytest.raises(UserError, match="gpt2 is a decoder-only model; seq2seq needs an encoder-decoder"):
        SEQ2SEQ.check_model(s2s_task(), decoder_configs()["gpt2"], tokenizer)
    SEQ2SEQ.check_model(s2s_task(), transformers.T5Config(), tokenizer)
    with pytest.raises(UserError, match="the target of label 'negative' is .* tokens, more than max_target_length"):
        SEQ2SEQ.check_model(s2s_task(**{**SENTIMENT, "max_target_length": 2}), transformers.T5Config(), tokenizer)


# ---- one encoder-decoder shared by every head ------------------------------------------------------------


def tiny_bart() -> transformers.BartModel:
    return transformers.BartModel(transformers.BartConfig(
        vocab_size=120, d_model=16, encoder_layers=1, decoder_layers=1, encoder_attention_heads=2,
        decoder_attention_heads=2, encoder_ffn_dim=24, decoder_ffn_dim=24, max_position_embeddings=64))


@pytest.mark.parametrize("arch", ["t5", "bart"])
def test_seq2seq_classification_and_token_classification_share_one_encoder_decoder(arch, tmp_path):
    torch.manual_seed(0)
    if arch == "t5":
        base = transformers.T5Model(transformers.T5Config(vocab_size=120, d_model=16, d_kv=8, d_ff=24, num_layers=1,
                                                          num_heads=2, decoder_start_token_id=0))
    else:
        base = tiny_bart()
    tasks = [s2s_task(), CLS, NER] if arch == "t5" else [s2s_task(), CLS]  # no BartForTokenClassification
    model = MultitaskModel(base, tasks).eval()
    seq2seq = model.task_models["s2s"]
    assert seq2seq.get_encoder() is base.get_encoder() and seq2seq.get_decoder() is base.get_decoder()
    assert seq2seq.get_output_embeddings().weight is base.get_input_embeddings().weight  # tied, as the base has it
    if arch == "t5":  # T5ForTokenClassification: an encoder-only T5 whose parts are the base's
        assert model.task_models["ner"].get_input_embeddings() is base.get_input_embeddings()
    # every shared weight once in the state dict: the task models add only their heads
    heads = {k for k in model.state_dict() if k.startswith("task_models.")}
    assert all(not any(p in k for p in (".encoder.", ".decoder.", ".shared.")) for k in heads), sorted(heads)
    ids = torch.tensor([[5, 6, 7, 8, 2], [9, 10, 11, 2, 1]]) if arch == "bart" else torch.tensor([[5, 6, 7, 1],
                                                                                                 [9, 10, 1, 0]])
    inputs = {"input_ids": ids, "attention_mask": (ids != base.config.pad_token_id).long()}
    generated = model.active_task_model("s2s").generate(**inputs, max_new_tokens=4, do_sample=False)
    # the export: standalone models with the shared weights copied in, loadable with their Auto classes
    export_tasks(model, t5_tokenizer(), tmp_path / "export")
    standalone = transformers.AutoModelForSeq2SeqLM.from_pretrained(tmp_path / "export" / "s2s")
    assert torch.equal(standalone.generate(**inputs, max_new_tokens=4, do_sample=False), generated)
    classifier = transformers.AutoModelForSequenceClassification.from_pretrained(tmp_path / "export" / "cls")
    assert torch.allclose(classifier(**inputs).logits, model("cls", **inputs).logits, atol=1e-6)
    one = MultitaskModel.from_task_model(s2s_task(), standalone)  # `evaluate` on an export
    assert torch.equal(one.active_task_model("s2s").generate(**inputs, max_new_tokens=4, do_sample=False), generated)


# ---- training end to end (a tiny T5 shared by text-to-text tasks and a classifier) --------------------------


def write_tasks(root, **sentiment_extra: str) -> None:
    """The demo's sentiment sentences three ways: labels as words (SST-2 as T5 trains it), the sentence's first two
    words (free text), and a classifier on the same T5."""
    from trainer.tasks.demo import demo_columns

    for split in ("train", "dev"):
        columns = demo_columns("demo_sentiment", split)
        with open(root / f"{split}.tsv", "w", newline="", encoding="utf-8") as handle:
            writer = csv.writer(handle, delimiter="\t")
            writer.writerow(["sentence", "label", "start"])
            for text, label in zip(columns["text_a"], columns["label"], strict=True):
                writer.writerow([text, label, " ".join(text.split()[:2])])
    files = "train_file: train.tsv, dev_file: dev.tsv"
    (root / "tasks.yaml").write_text(
        "tasks:\n"
        f"  - {{name: sst2_t2t, type: seq2seq, {files}, source_column: sentence, target_column: label, "
        "prefix: 'sst2 sentence: ', target_template: '{label}', label_names: [bad, good], max_target_length: 8}\n"
        f"  - {{name: start, type: seq2seq, {files}, source_column: sentence, target_column: start, "
        "prefix: 'first words: ', max_target_length: 8}\n"
        f"  - {{name: sent_cls, type: classification, {files}, text_columns: [sentence], label_column: label, "
        "labels: ['0', '1']}\n", encoding="utf-8")


@pytest.fixture(scope="module")
def t5_run(tmp_path_factory, forked_cli):
    root = tmp_path_factory.mktemp("t5")
    write_tasks(root)
    env = {"MODEL_NAME": str(save_tiny_t5(root / "t5")), "TASKS_FILE": str(root / "tasks.yaml"),
           "TASKS": "sst2_t2t,start,sent_cls", "OUTPUT_DIR": str(root / "out"), "MAX_STEPS": "300",
           "BATCH_SIZE": "16", "MAX_TRAIN_SAMPLES": "600", "MAX_EVAL_SAMPLES": "64", "MAX_SEQ_LENGTH": "32",
           "LEARNING_RATE": "3e-3", "LOGGING_STEPS": "50", "EVAL_STEPS": "150", "SAVE_STEPS": "150"}
    result = forked_cli.run("train", env=cli_environ(env), cwd=ROOT)
    assert result.returncode == 0, result.stderr[-3000:]
    return root / "out", env, result


@pytest.mark.slow
def test_t5_text_to_text_loss_falls_and_accuracy_comes_through_the_template(t5_run):
    out, _, result = t5_run
    history = json.loads((out / "checkpoint-300" / "trainer_state.json").read_text())["log_history"]
    for task in ("sst2_t2t", "start"):
        losses = [entry[f"{task}_loss"] for entry in history if f"{task}_loss" in entry]
        assert losses[-1] < 0.5 * losses[0], (task, losses)  # the loss falls
    report = json.loads((out / "metrics.json").read_text())
    sentiment = report["tasks"]["sst2_t2t"]
    assert report["main_metric"]["sst2_t2t"] == "accuracy" and report["main_metric"]["start"] == "exact_match"
    assert {"exact_match", "rouge1", "rouge2", "rougeL", "bleu", "accuracy"} <= set(sentiment)
    # every target is a label's text: a generated text maps back to the right label exactly when it is the target
    assert sentiment["accuracy"] == pytest.approx(sentiment["exact_match"]), sentiment
    start = report["tasks"]["start"]
    assert start["rougeL"] >= start["exact_match"] and start["rouge1"] >= start["rouge2"], start
    assert "start: seq2seq predicting its dev split took" in result.stderr  # generation time, per task


@pytest.mark.slow
def test_t5_save_reload_is_bit_identical_and_the_export_generates_as_predict(t5_run, cli):
    out, env, _ = t5_run
    saved = load_file(out / "model" / "model.safetensors")
    model = MultitaskModel.from_checkpoint(out / "model")
    state = model.state_dict()
    assert state.keys() == saved.keys() and all(torch.equal(state[k], saved[k]) for k in saved)
    texts = ["the film was superb", "what a clumsy story"]
    lines = "".join(json.dumps({"text": t}) + "\n" for t in texts)
    for task in ("sst2_t2t", "start"):
        result = cli("predict", f"--task={task}", "--text=-", env=env, stdin=lines)
        assert result.returncode == 0, result.stderr[-2000:]
        ours = [json.loads(line)["generated_text"] for line in result.stdout.splitlines()]
        export = out / "export" / task
        tokenizer = transformers.AutoTokenizer.from_pretrained(export)
        standalone = transformers.AutoModelForSeq2SeqLM.from_pretrained(export).eval()
        prefix = "sst2 sentence: " if task == "sst2_t2t" else "first words: "
        for text, predicted in zip(texts, ours, strict=True):
            ids = standalone.generate(**tokenizer(prefix + text, return_tensors="pt"), max_new_tokens=8)
            assert tokenizer.decode(ids[0], skip_special_tokens=True).strip() == predicted
    words = [json.loads(line).get("label") for line in cli("predict", "--task=sst2_t2t", "--text=-", env=env,
                                                          stdin=lines).stdout.splitlines()]
    assert all(w in ("bad", "good", None) for w in words)


def test_resume_is_bit_identical_with_seq2seq_in_a_mix(tmp_path):
    write_tasks(tmp_path)
    common = {"model_name": str(save_tiny_t5(tmp_path / "t5")), "max_steps": 10, "batch_size": 8,
              "max_train_samples": 48, "max_eval_samples": 8, "save_steps": 5, "eval_steps": 100, "seed": 3,
              "max_seq_length": 24, "tasks": "start,sent_cls", "tasks_file": str(tmp_path / "tasks.yaml"),
              "logging_steps": 5}
    a, b = straight_and_resumed(tmp_path, 6, **common)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), "the resumed run diverged"


@pytest.mark.slow
def test_torchrun_seq2seq_and_classification_on_one_t5_end_equal_on_both_ranks(tmp_path):
    from .test_ddp import torchrun_worker

    write_tasks(tmp_path)
    tasks, _ = torchrun_worker(tmp_path, MODEL_NAME=str(save_tiny_t5(tmp_path / "t5")), SAMPLING="uniform",
                               TASKS="start,sent_cls", TASKS_FILE=str(tmp_path / "tasks.yaml"), MAX_SEQ_LENGTH="24")
    assert set(tasks[0]) == {"start", "sent_cls"}
    report = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert "rougeL" in report["tasks"]["start"]  # generated on both ranks, padded and gathered


def test_packing_pads_seq2seq_with_one_logged_line(caplog):
    import logging

    from trainer.data.packing import packer_for

    base = transformers.T5Model(transformers.T5Config(vocab_size=120, d_model=16, d_kv=8, d_ff=24, num_layers=1,
                                                      num_heads=2))
    with caplog.at_level(logging.WARNING, logger="trainer.data.packing"):
        assert packer_for(base, [s2s_task()]) is None
    assert [r.getMessage() for r in caplog.records] == [
        "PACKING=1: t5 is not a bidirectional encoder; every batch is padded instead"]
    assert SEQ2SEQ.no_packing  # on any encoder that could pack, seq2seq batches are still padded (its own line)


@pytest.mark.parametrize("options", [{}, {"prefix": "stsb ", "source_column": ("sentence", "start")},
                                     {**SENTIMENT, "target_column": "label", "prefix": "sst2 sentence: "}])
def test_column_wise_normalising_matches_row_by_row(options):
    import pyarrow as pa

    task = s2s_task(**options)
    rows = [{"sentence": "what a film", "start": "what a", "label": 1},
            {"sentence": "dull", "start": "dull", "label": 0}]
    table = pa.Table.from_pylist(rows)
    assert SEQ2SEQ.normalise_arrow(task, table).to_pylist() == [SEQ2SEQ.normalise(task, r, "x") for r in rows]
    empty = pa.Table.from_pylist([{**rows[0], "start": " "}])
    if not task.target_template:
        assert SEQ2SEQ.normalise_arrow(task, empty) is None  # row by row names the empty target's line


def test_target_choices_column_makes_the_chosen_answers_text_the_target():
    """CommonsenseQA as text to text: answerKey picks the item of choices.text, which becomes the target; a key that
    picks no item, or the field without `labels`, is one line."""
    kind = KINDS["seq2seq"]
    task = TaskSpec.from_dict({"name": "csqa", "type": "seq2seq", "source_column": ["question"],
                               "target_column": "answerKey", "target_choices_column": "choices.text",
                               "labels": ["A", "B", "C"]})
    row = {"question": "where do you keep milk ?", "answerKey": "B",
           "choices": {"label": ["A", "B", "C"], "text": ["oven", "fridge", "shelf"]}}
    assert kind.normalise(task, row, "csqa.jsonl:1") == {"source": "where do you keep milk ?", "target": "fridge"}
    short = {**row, "choices": {"label": ["A", "B"], "text": ["oven"]}}
    with pytest.raises(UserError, match=r"csqa.jsonl:2: answerKey='B' picks choice 2 of 'choices.text', which has 1"):
        kind.normalise(task, short, "csqa.jsonl:2")
    with pytest.raises(UserError, match="'target_choices_column' needs 'labels'"):
        kind.validate(TaskSpec.from_dict({"name": "c", "type": "seq2seq", "source_column": ["q"],
                                          "target_column": "a", "target_choices_column": "choices.text"}), "t.yaml")


def test_lora_per_task_on_t5_exports_merged_and_unmerged_that_generate_as_the_multitask_model(tmp_path):
    """ADAPTER=lora_per_task with a seq2seq task beside a classifier on one T5: each task's adapter drives its
    generation, and both export forms (the adapter merged into a copy of the base; a peft adapter directory)
    generate what the multitask model generates."""
    from trainer.model.adapters import ADAPTERS, LoraOptions
    from trainer.outputs.peft_export import load_peft_task, save_peft_task

    base_dir = save_tiny_t5(tmp_path / "t5")
    tokenizer = transformers.AutoTokenizer.from_pretrained(base_dir)
    tasks = [s2s_task(), CLS]
    torch.manual_seed(0)
    adapter = ADAPTERS["lora_per_task"](LoraOptions(dropout=0.0), [t.name for t in tasks])
    model = MultitaskModel(transformers.AutoModel.from_pretrained(base_dir), tasks, adapter=adapter).eval()
    with torch.no_grad():
        for name, param in model.named_parameters():
            if ".lora_B." in name:
                param.normal_(0, 0.5)  # the adapters change the output
    inputs = tokenizer(["the film was good", "a dull plot"], return_tensors="pt", padding=True)
    inputs = {"input_ids": inputs["input_ids"], "attention_mask": inputs["attention_mask"]}
    generated = model.active_task_model("s2s").generate(**inputs, max_new_tokens=6, do_sample=False)
    with torch.no_grad():
        plain = transformers.AutoModelForSeq2SeqLM.from_pretrained(base_dir).eval()
        assert not torch.equal(plain.generate(**inputs, max_new_tokens=6, do_sample=False), generated)

    export_tasks(model, tokenizer, tmp_path / "merged")
    merged = transformers.AutoModelForSeq2SeqLM.from_pretrained(tmp_path / "merged" / "s2s").eval()
    assert torch.equal(merged.generate(**inputs, max_new_tokens=6, do_sample=False), generated)

    save_peft_task(model, tokenizer, "s2s", tmp_path / "unmerged", str(base_dir))
    unmerged = load_peft_task(transformers.AutoModelForSeq2SeqLM, tmp_path / "unmerged")
    assert torch.equal(unmerged.generate(**inputs, max_new_tokens=6, do_sample=False), generated)
    import peft

    auto = peft.AutoPeftModelForSeq2SeqLM.from_pretrained(tmp_path / "unmerged").eval()  # peft alone
    assert torch.equal(auto.generate(**inputs, max_new_tokens=6, do_sample=False), generated)


def test_all_tasks_steps_with_an_adapter_per_task_train_seq2seq_beside_a_classifier(tmp_path):
    """SAMPLING=all_tasks (every step sums both tasks' losses) with ADAPTER=lora_per_task on one T5: both tasks
    train and are scored (seq2seq by generation), and the model keeps each task's adapter and no base weight."""
    write_tasks(tmp_path)
    base = save_tiny_t5(tmp_path / "t5")
    out = tmp_path / "out"
    train(settings_of(model_name=str(base), max_steps=4, batch_size=8, max_train_samples=32, max_eval_samples=8,
                      eval_steps=4, save_steps=4, max_seq_length=24, tasks="start,sent_cls",
                      tasks_file=str(tmp_path / "tasks.yaml"), sampling="all_tasks", adapter="lora_per_task",
                      output_dir=str(out), logging_steps=2))
    report = json.loads((out / "metrics.json").read_text())
    assert {"rougeL", "exact_match"} <= set(report["tasks"]["start"]) and "accuracy" in report["tasks"]["sent_cls"]
    saved = load_file(out / "model" / "model.safetensors")
    assert saved and not any(k.startswith("encoder.") and ".lora_" not in k for k in saved)  # no base weight saved
    assert any(".lora_A.start." in k for k in saved) and any(".lora_A.sent_cls." in k for k in saved)

"""masked_lm and causal_lm end to end: tying, resume, exports and their pipelines, decoders as the shared base."""

import json

import pytest
import torch
import transformers
from safetensors.torch import load_file

from trainer.data.read import read_split
from trainer.model.modeling import MultitaskModel
from trainer.tasks.catalog import BUILTIN_TASKS

from .test_training import straight_and_resumed
from .tiny import ROOT, SHARED_DATA, cli_environ, save_tiny_gpt2, save_tiny_pretrained, write_text


def tasks_file(root, *entries: str):
    path = root / "tasks.yaml"
    path.write_text("tasks:\n" + "".join(f"  - {e}\n" for e in entries))
    return path


MLM_ENTRY = "{name: text, type: masked_lm, train_file: train.txt, dev_file: dev.txt}"
CLM_ENTRY = "{name: text, type: causal_lm, train_file: train.txt, dev_file: dev.txt}"


def train_on_text(forked_cli, root, model, entry: str, tasks: str, **settings: str):
    """Train a classifier beside a language-modelling task on the demo's sentences; (OUTPUT_DIR, env)."""
    write_text(root / "train.txt", 600)
    write_text(root / "dev.txt", 80)
    env = {"MODEL_NAME": str(model), "TASKS_FILE": str(tasks_file(root, entry)), "TASKS": tasks,
           "OUTPUT_DIR": str(root / "out"), "MAX_STEPS": "200", "BATCH_SIZE": "16", "MAX_TRAIN_SAMPLES": "300",
           "MAX_EVAL_SAMPLES": "64", "MAX_SEQ_LENGTH": "32", **settings}
    result = forked_cli.run("train", env=cli_environ(env), cwd=ROOT)
    assert result.returncode == 0, result.stderr[-3000:]
    return root / "out", env


@pytest.fixture(scope="module")
def mlm_run(tmp_path_factory, forked_cli):
    """A tiny BERT trained on the demo sentiment task beside a masked-LM task (PyText's setup)."""
    root = tmp_path_factory.mktemp("mlm")
    return train_on_text(forked_cli, root, save_tiny_pretrained(root / "tiny"), MLM_ENTRY, "demo_sentiment,text",
                         LEARNING_RATE="2e-3", TASK_WEIGHTS="text=0.5")


@pytest.mark.slow
def test_masked_lm_beside_a_classifier(mlm_run, cli):
    out, env = mlm_run
    report = json.loads((out / "metrics.json").read_text())
    text = report["tasks"]["text"]
    # a 400-token vocabulary: chance is perplexity ~400 and accuracy ~0.0025
    assert text["perplexity"] < 60 and text["accuracy"] > 0.03, text
    # the LM task is auxiliary: the average is the classifier's accuracy alone
    assert report["average"] == pytest.approx(report["tasks"]["demo_sentiment"]["accuracy"])
    # tied head: one tensor on disk, the same storage after a reload
    weights = load_file(out / "model" / "model.safetensors")
    assert not any(k.startswith("task_models.text.") and k.endswith("decoder.weight") for k in weights)
    model = MultitaskModel.from_checkpoint(out / "model")
    head = model.task_models["text"].get_output_embeddings().weight
    assert head.data_ptr() == model.encoder.get_input_embeddings().weight.data_ptr()
    # the export works in the fill-mask pipeline and agrees with `predict`
    result = cli("predict", "--task=text", "--text=the movie was [MASK] good", env=env)
    assert result.returncode == 0, result.stderr[-2000:]
    ours = json.loads(result.stdout)["masks"][0][0]["token"]
    export = out / "export" / "text"
    standalone = transformers.AutoModelForMaskedLM.from_pretrained(export)
    assert standalone.get_output_embeddings().weight.data_ptr() == standalone.get_input_embeddings().weight.data_ptr()
    fill = transformers.pipeline("fill-mask", model=str(export), device="cpu")
    assert fill("the movie was [MASK] good")[0]["token_str"].strip() == ours


def test_masked_lm_head_stays_tied_while_training():
    from .test_kinds import MLM, batch, build_demo_tokenizer, encoder_configs

    tokenizer = build_demo_tokenizer()
    torch.manual_seed(0)
    model = MultitaskModel(transformers.AutoModel.from_config(encoder_configs(len(tokenizer))["bert"]), [MLM])
    before = model.encoder.get_input_embeddings().weight.detach().clone()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    for _ in range(3):
        model(**batch(MLM, tokenizer)).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    embeddings = model.encoder.get_input_embeddings().weight
    assert not torch.equal(embeddings, before)
    assert model.task_models["mlm"].get_output_embeddings().weight.data_ptr() == embeddings.data_ptr()


def test_resume_is_bit_identical_with_a_masked_lm_task(tmp_path):
    write_text(tmp_path / "train.txt", 200)
    write_text(tmp_path / "dev.txt", 20, seed=1)
    model_dir = save_tiny_pretrained(tmp_path / "tiny")  # dropout 0.1 and random masks: RNG state matters
    common = {"model_name": str(model_dir), "max_steps": 12, "batch_size": 8, "max_train_samples": 64,
              "max_eval_samples": 16, "save_steps": 5, "eval_steps": 100, "seed": 3, "max_seq_length": 32,
              "tasks": "demo_sentiment,text", "tasks_file": str(tasks_file(tmp_path, MLM_ENTRY))}
    a, b = straight_and_resumed(tmp_path, 7, **common)
    assert all(torch.equal(a[k], b[k]) for k in a), "resumed run diverged from the uninterrupted one"


@pytest.mark.skipif(not SHARED_DATA.is_dir(), reason="../shared/data is not beside the project")
def test_wikitext2_builtin_reads_valid_as_train_and_test_as_dev():
    task = BUILTIN_TASKS["wikitext2"]
    train_rows, dev_rows = (read_split(task, split, str(SHARED_DATA)) for split in ("train", "dev"))
    assert len(train_rows) == 2461 and len(dev_rows) == 2891  # non-blank lines of valid.txt / test.txt
    assert all(t.strip() for t in train_rows.text)


# ---- causal LM on a decoder shared with a classifier (Phang's GPT-2 variant) ----------------------


@pytest.fixture(scope="module")
def gpt2_run(tmp_path_factory, forked_cli):
    root = tmp_path_factory.mktemp("gpt2")
    return train_on_text(forked_cli, root, save_tiny_gpt2(root / "tiny"), CLM_ENTRY, "text,demo_sentiment",
                         LEARNING_RATE="3e-3")


@pytest.mark.slow
def test_gpt2_shared_by_a_causal_lm_and_a_classifier(gpt2_run, cli):
    out, env = gpt2_run
    report = json.loads((out / "metrics.json").read_text())
    assert report["tasks"]["text"]["perplexity"] < 60, report["tasks"]["text"]
    assert report["tasks"]["demo_sentiment"]["accuracy"] > 0.75, report["tasks"]["demo_sentiment"]
    for name in ("text", "demo_sentiment"):
        config = json.loads((out / "export" / name / "config.json").read_text())
        assert config["pad_token_id"] == config["eos_token_id"]  # GPT-2 has no pad token: EOS pads
    lm = transformers.AutoModelForCausalLM.from_pretrained(out / "export" / "text").eval()
    tokenizer = transformers.AutoTokenizer.from_pretrained(out / "export" / "text")
    prompt = tokenizer("the movie was", return_tensors="pt")
    generated = lm.generate(**prompt, max_new_tokens=5, do_sample=False, pad_token_id=tokenizer.pad_token_id)
    result = cli("predict", "--task=text", "--text=the movie was", env=env)
    assert result.returncode == 0, result.stderr[-2000:]
    continuation = json.loads(result.stdout)["continuation"]
    assert continuation.strip().startswith(tokenizer.decode(generated[0, prompt["input_ids"].shape[1]:],
                                                                        skip_special_tokens=True).strip())
    classifier = transformers.AutoModelForSequenceClassification.from_pretrained(out / "export" / "demo_sentiment")
    assert classifier.config.id2label == {0: "negative", 1: "positive"}
    result = cli("predict", "--task=demo_sentiment", '--text=["what a wonderful film","the plot was dull"]', env=env)
    assert [json.loads(line)["label"] for line in result.stdout.splitlines()] == ["positive", "negative"]


def test_decoder_classification_reads_the_last_real_token_under_padding():
    """Right padding with EOS as pad: a padded batch gives each text the logits it gets alone."""
    from .test_kinds import CLS, build_demo_tokenizer  # noqa: F401
    from .tiny import decoder_configs, gpt2_tokenizer

    tokenizer = gpt2_tokenizer()
    tokenizer.pad_token = tokenizer.eos_token
    for arch, config in decoder_configs(len(tokenizer), pad_token_id=tokenizer.pad_token_id).items():
        torch.manual_seed(0)
        model = MultitaskModel(transformers.AutoModel.from_config(config), [CLS]).eval()
        texts = ["a good movie", "the plot was really dull and the acting was poor"]
        padded = tokenizer(texts, padding=True, return_tensors="pt")
        assert (padded["attention_mask"] == (padded["input_ids"] != tokenizer.pad_token_id)).all()
        together = model("sent", **padded).logits
        for i, text in enumerate(texts):
            alone = model("sent", **tokenizer([text], return_tensors="pt")).logits
            torch.testing.assert_close(together[i], alone[0], rtol=1e-4, atol=1e-5, msg=arch)


# ---- bad input: one line, exit 2, nothing written ------------------------------------------------

KIND_ERRORS = {
    "tag outside the label list": ("{name: t, type: token_classification, labels: [O, B-X], train_file: a.jsonl,"
                                   " dev_file: a.jsonl}", '{"tokens": ["a"], "tags": ["B-Y"]}',
                                   "bert", r"a.jsonl:1: tag 'B-Y' of task 't' is not in its label list \(O, B-X\)"),
    "more tokens than tags": ("{name: t, type: token_classification, labels: [O, B-X], train_file: a.jsonl,"
                              " dev_file: a.jsonl}", '{"tokens": ["a", "b"], "tags": ["O"]}',
                              "bert", r"the sentence has 2 word\(s\) but 1 tag\(s\); give one tag per word"),
    "empty sentence": ("{name: t, type: token_classification, labels: [O, B-X], train_file: a.jsonl,"
                       " dev_file: a.jsonl}", '{"tokens": [], "tags": []}', "bert", r"an empty sentence"),
    "masked_lm without a mask token": (MLM_ENTRY.replace("text", "t", 1).replace("train.txt", "a.txt")
                                       .replace("dev.txt", "a.txt"),
                                       "some text", "gpt2", r"has no mask token; use an encoder with one"),
    "causal_lm on an encoder": (CLM_ENTRY.replace("text", "t", 1).replace("train.txt", "a.txt")
                                .replace("dev.txt", "a.txt"), "some text",
                                "bert", r"bert is an encoder-only model; use a decoder"),
    "unknown kind": ("{name: t, type: ner, train_file: a.txt, dev_file: a.txt}", "x", "bert",
                     r"type 'ner' is not allowed; choose one of classification, .*token_classification"),
    "field of another kind": ("{name: t, type: masked_lm, labels: [a, b], train_file: a.txt, dev_file: a.txt}", "x",
                              "bert", r"field\(s\) labels are not allowed for a masked_lm task \(labels belong"),
    "misspelled main_metric": ("{name: t, type: masked_lm, main_metric: perplexty, train_file: a.txt,"
                               " dev_file: a.txt}", "x", "bert",
                               r"main_metric 'perplexty' is not a metric of this masked_lm task; choose one of "
                               r"accuracy, perplexity, loss"),
}


@pytest.fixture(scope="module")
def tiny_models(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    return {"bert": save_tiny_pretrained(root / "bert"), "gpt2": save_tiny_gpt2(root / "gpt2")}


@pytest.mark.parametrize("case", sorted(KIND_ERRORS))
def test_kind_bad_input_gets_one_line_and_writes_nothing(tmp_path, tiny_models, forked_cli, case):
    entry, content, model, message = KIND_ERRORS[case]
    data = tmp_path / ("a.jsonl" if "jsonl" in entry else "a.txt")
    data.write_text(content + "\n")
    out = tmp_path / "out"
    env = {"MODEL_NAME": str(tiny_models[model]), "TASKS": "t", "OUTPUT_DIR": str(out),
           "TASKS_FILE": str(tasks_file(tmp_path, entry)), "MAX_STEPS": "2"}
    result = forked_cli.run("train", env=cli_environ(env), cwd=ROOT)
    assert result.returncode == 2, result.stderr[-2000:]
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr[-2000:]
    import re

    assert re.search(message, lines[0]), lines[0]
    assert not out.exists()

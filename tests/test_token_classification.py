"""token_classification: BIO entity metrics, sub-word alignment, CoNLL/JSONL reading, WNUT-17, and a real run."""

import json

import pytest
import torch
import transformers

from trainer.data.read import normalise_hub_rows, read_split
from trainer.errors import UserError
from trainer.tasks.catalog import BUILTIN_TASKS
from trainer.tasks.declare import load_tasks_file
from trainer.tasks.demo import build_demo_tokenizer
from trainer.tasks.kinds import KINDS
from trainer.tasks.kinds.token_classification import align_tags, bio_spans, entity_scores, words_tokenizer
from trainer.tasks.spec import TaskSpec

from .tiny import NER_LABELS, SHARED_DATA, ner_sentences, roberta_tokenizer, run_cli, save_tiny_pretrained, write_conll

NER = TaskSpec.from_dict({"name": "ner", "type": "token_classification", "labels": NER_LABELS})


def test_bio_spans_follow_conlleval():
    # I- without B- starts an entity; adjacent entities of different types are two entities
    tags = ["I-PER", "I-PER", "B-LOC", "I-ORG", "O", "B-PER", "B-PER", "I-LOC", "I-LOC"]
    assert bio_spans(tags) == [("PER", 0, 2), ("LOC", 2, 3), ("ORG", 3, 4), ("PER", 5, 6), ("PER", 6, 7),
                               ("LOC", 7, 9)]


def test_entity_f1_is_hand_checked():
    gold = [["B-PER", "I-PER", "O", "B-LOC"], ["I-ORG", "B-LOC", "O"]]
    pred = [["B-PER", "I-PER", "O", "B-ORG"], ["B-ORG", "I-LOC", "O"]]
    # gold: PER(0,2) LOC(3,4) | ORG(0,1) LOC(1,2); pred: PER(0,2) ORG(3,4) | ORG(0,1) LOC(1,2)
    # correct: PER, ORG(0,1), LOC(1,2) = 3 of 4 predicted and of 4 gold
    scores = entity_scores(gold, pred)
    assert scores["precision"] == pytest.approx(3 / 4) and scores["recall"] == pytest.approx(3 / 4)
    assert scores["f1"] == pytest.approx(3 / 4)
    assert scores["accuracy"] == pytest.approx(4 / 7)  # 3 of 7 tags differ: B-LOC/B-ORG, I-ORG/B-ORG, B-LOC/I-LOC
    missed = entity_scores([["B-PER", "O"]], [["O", "O"]])
    assert missed == {"f1": 0.0, "precision": 0.0, "recall": 0.0, "accuracy": 0.5}


def test_token_classification_metrics_read_only_the_first_sub_word():
    labels = torch.tensor([[-100, 1, -100, 0, 3, -100], [-100, 5, 6, -100, -100, -100]]).numpy()
    preds = torch.tensor([[0, 1, 4, 0, 3, 0], [0, 5, 0, 2, 2, 2]]).numpy()
    metrics = KINDS["token_classification"].compute_metrics(NER, preds, labels)
    # sentence 1: PER, LOC right; sentence 2: gold ORG(0,2), predicted ORG(0,1): wrong
    assert metrics["precision"] == pytest.approx(2 / 3) and metrics["recall"] == pytest.approx(2 / 3)


def test_sub_word_alignment_wordpiece():
    tokenizer = build_demo_tokenizer()
    words = ["the", "brilliantly", "moving", "film"]
    encoded = tokenizer([words], is_split_into_words=True)
    pieces = tokenizer.convert_ids_to_tokens(encoded["input_ids"][0])
    labels = align_tags(encoded.word_ids(0), [1, 2, 3, 4])
    assert any(p.startswith("##") for p in pieces), pieces  # the test needs a word split in sub-words
    first = [lab for lab in labels if lab != -100]
    assert first == [1, 2, 3, 4]
    for piece, label in zip(pieces, labels, strict=True):
        assert (label == -100) == (piece in ("[CLS]", "[SEP]") or piece.startswith("##"))


def test_sub_word_alignment_byte_level_bpe_uses_a_prefix_space():
    tokenizer = roberta_tokenizer()
    words = ["the", "wonderful", "movie", "was", "delightful"]
    fixed = words_tokenizer(tokenizer)
    encoded = fixed([words], is_split_into_words=True)
    # each word is tokenised as it is inside running text (with its leading space), as in pretraining
    running = tokenizer(" " + " ".join(words))["input_ids"]
    assert encoded["input_ids"][0] == running
    pieces = fixed.convert_ids_to_tokens(encoded["input_ids"][0])
    labels = align_tags(encoded.word_ids(0), [0, 1, 2, 3, 4])
    assert [lab for lab in labels if lab != -100] == [0, 1, 2, 3, 4]
    for piece, label in zip(pieces, labels, strict=True):
        assert (label != -100) == piece.startswith("Ġ")
    assert len(pieces) > len(words) + 2  # some word really is several sub-words
    assert tokenizer.add_prefix_space is False  # the user's tokenizer is left as it was



# ---- reading ----------------------------------------------------------------------------------


def declare(tmp_path, body: str, **files: str):
    for name, content in files.items():
        (tmp_path / name).write_text(content, encoding="utf-8")
    path = tmp_path / "tasks.yaml"
    path.write_text("tasks:\n  - " + body + "\n")
    return load_tasks_file(str(path))


def test_conll_with_several_columns_and_jsonl(tmp_path):
    conll = "-DOCSTART- -X- O O\n\nAlice NNP B-NP B-PER\nsleeps VBZ B-VP O\n\n\nBob NNP B-NP B-PER\n"
    tasks = declare(tmp_path, "{name: pos, type: token_classification, labels: [O, B-PER], conll_columns: [0, 3],"
                    " train_file: a.conll, dev_file: b.jsonl, tags_column: ner}",
                    **{"a.conll": conll, "b.jsonl": json.dumps({"tokens": ["Carol"], "ner": ["B-PER"]}) + "\n"})
    train = read_split(tasks["pos"], "train", None)
    assert train.tokens == [["Alice", "sleeps"], ["Bob"]] and train.tags == [[1, 0], [1]]
    assert read_split(tasks["pos"], "dev", None).tags == [[1]]


BAD_SENTENCES = [
    ("a.conll", "Alice\tB-PER\nsleeps\tB-VERB\n", r"a.conll:2: tag 'B-VERB' of task 'ner' is not in its label list"),
    ("a.jsonl", '{"tokens": ["a", "b"], "tags": ["O"]}\n', r"a.jsonl:1: the sentence has 2 word\(s\) but 1 tag"),
    ("a.jsonl", '{"tokens": [], "tags": []}\n', r"a.jsonl:1: an empty sentence"),
    ("a.conll", "Alice\n", r"a.conll:1: expected a word and a tag in columns 0 and -1, found 1 column"),
]


@pytest.mark.parametrize(("name", "content", "message"), BAD_SENTENCES)
def test_bad_sentences_get_one_line_naming_file_and_line(tmp_path, name, content, message):
    tasks = declare(tmp_path, "{name: ner, type: token_classification, labels: [O, B-PER, I-PER],"
                    f" train_file: {name}, dev_file: {name}}}", **{name: content})
    with pytest.raises(UserError, match=message):
        read_split(tasks["ner"], "train", None)


@pytest.mark.skipif(not SHARED_DATA.is_dir(), reason="../shared/data is not beside the project")
def test_wnut17_builtin_reads_the_official_files():
    task = BUILTIN_TASKS["wnut17"]
    train, dev = (read_split(task, split, str(SHARED_DATA)) for split in ("train", "dev"))
    assert (len(train), len(dev)) == (3394, 1009)  # sentences, as SOURCES.md counts them
    assert (sum(map(len, train.tokens)), sum(map(len, dev.tokens))) == (62730, 15733)
    assert len({t for tags in train.tags for t in tags}) == 13


def test_wnut17_hub_rows_carry_integer_tags():
    import datasets

    hub = datasets.Dataset.from_dict({"id": ["0"], "tokens": [["Alice", "in", "Paris"]], "ner_tags": [[9, 0, 7]]})
    rows = normalise_hub_rows(BUILTIN_TASKS["wnut17"], hub)
    assert rows.tokens == [["Alice", "in", "Paris"]]
    assert [BUILTIN_TASKS["wnut17"].labels[i] for i in rows.tags[0]] == ["B-person", "O", "B-location"]


# ---- a real run: train, predict, export, pipeline ------------------------------------------------


@pytest.fixture(scope="module")
def ner_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("ner")
    write_conll(root / "train.conll", ner_sentences(400, seed=1))
    write_conll(root / "dev.conll", ner_sentences(60, seed=2))
    (root / "tasks.yaml").write_text(
        f"tasks:\n  - {{name: ner, type: token_classification, labels: [{', '.join(NER_LABELS)}],"
        " train_file: train.conll, dev_file: dev.conll}\n")
    model = save_tiny_pretrained(root / "tiny")
    out = root / "out"
    env = {"MODEL_NAME": str(model), "TASKS_FILE": str(root / "tasks.yaml"), "TASKS": "ner,demo_sentiment",
           "OUTPUT_DIR": str(out), "MAX_STEPS": "300", "BATCH_SIZE": "16", "LEARNING_RATE": "3e-3",
           "MAX_TRAIN_SAMPLES": "400", "MAX_EVAL_SAMPLES": "60", "LOGGING_STEPS": "20",
           "EVAL_STEPS": "50", "SAVE_STEPS": "50"}  # every epoch: the sentence below is pinned to this cadence
    result = run_cli("train", env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    return out, env


@pytest.mark.slow
def test_ner_trains_predicts_and_exports(ner_run, tmp_path):
    out, env = ner_run
    report = json.loads((out / "metrics.json").read_text())
    assert report["main_metric"]["ner"] == "f1"
    assert report["tasks"]["ner"]["f1"] > 0.7, report["tasks"]["ner"]  # an untrained tagger scores ~0
    assert {"precision", "recall", "accuracy"} <= set(report["tasks"]["ner"])

    result = run_cli("predict", "--task=ner", "--text=alice works for acme in paris", env=env)
    assert result.returncode == 0, result.stderr[-2000:]
    predicted = json.loads(result.stdout)
    assert [w for w, _ in predicted["tokens"]] == ["alice", "works", "for", "acme", "in", "paris"]
    assert [(e["type"], e["text"]) for e in predicted["entities"]] == [("PER", "alice"), ("ORG", "acme"),
                                                                        ("LOC", "paris")]

    export = out / "export" / "ner"
    model = transformers.AutoModelForTokenClassification.from_pretrained(export)
    assert model.config.id2label[1] == "B-PER"
    tagger = transformers.pipeline("token-classification", model=str(export), aggregation_strategy="first",
                                   device="cpu")
    groups = tagger("alice works for acme in paris")
    assert [(g["entity_group"], g["word"]) for g in groups] == [("PER", "alice"), ("ORG", "acme"), ("LOC", "paris")]


def test_token_classification_predict_matches_export_logits():
    """The multitask model and its export give the same tags (the pipeline test above uses a trained one)."""
    from trainer.model.modeling import MultitaskModel
    from trainer.outputs.export import export_tasks
    from trainer.outputs.inference import predict_inputs

    from .tiny import encoder_configs

    tokenizer = build_demo_tokenizer()
    torch.manual_seed(0)
    model = MultitaskModel(transformers.AutoModel.from_config(encoder_configs(len(tokenizer))["bert"]), [NER]).eval()
    ours = predict_inputs(NER, model.task_models["ner"], tokenizer,
                          [{"text": t} for t in ("alice lives in paris", "bob met carol at acme")], 128)
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        (path,) = export_tasks(model, tokenizer, f"{tmp}/export")
        standalone = transformers.AutoModelForTokenClassification.from_pretrained(path).eval()
        tagger = transformers.pipeline("token-classification", model=standalone, tokenizer=tokenizer,
                                       aggregation_strategy="first", device="cpu")
        for sentence, result in zip(["alice lives in paris", "bob met carol at acme"], ours, strict=True):
            words = tagger(sentence)
            assert [e["text"] for e in result["entities"]] == [g["word"] for g in words]

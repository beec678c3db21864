"""Tasks declared with `source:` (any `datasets.load_dataset` path), read offline from local parquet
directories whose features carry a `ClassLabel`."""

import json

import datasets
import pytest
from datasets import ClassLabel, Features, Sequence, Value

from trainer.data.read import read_split, resolve_source
from trainer.errors import UserError
from trainer.tasks.declare import load_tasks_file

from .test_first_hour import one_error_line
from .tiny import quick_env, run_cli, settings_of

EMOTIONS = ["anger", "joy", "optimism", "sadness"]
TWEETS = {"anger": "i am so angry", "joy": "what a happy day", "optimism": "it will get better", "sadness": "so sad"}


@pytest.fixture(autouse=True)
def datasets_cache(tmp_path, monkeypatch):
    """`load_dataset` caches its Arrow files under the test's directory, not ~/.cache."""
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / "hf-cache"))
    return tmp_path / "hf-cache"


def write_emotion(directory, features=None, repeat=1):
    """train/validation parquet files of TweetEval's emotion shape: `text`, `label` as a ClassLabel."""
    features = features or Features({"text": Value("string"), "label": ClassLabel(names=EMOTIONS)})
    labels = {"train": [0, 1, 2, 3, 1] * repeat, "validation": [3, 0] * repeat}
    for split, ids in labels.items():
        rows = {"text": [TWEETS[EMOTIONS[i]] for i in ids], "label": ids}
        datasets.Dataset.from_dict(rows, features=features).to_parquet(str(directory / f"{split}.parquet"))
    return directory


def declare(tmp_path, entry):
    (tmp_path / "tasks.yaml").write_text(f"tasks:\n  - {{{entry}}}\n")
    return tmp_path / "tasks.yaml"


EMOTION = "name: emotion, type: classification, text_columns: [text], label_column: label"


def test_classlabel_names_become_the_labels_in_order(tmp_path):
    write_emotion(tmp_path / "emotion_data")
    tasks_file = declare(tmp_path, f"{EMOTION}, source: {{dataset: emotion_data, dev: validation}}, "
                                   "main_metric: macro_f1")
    declared = load_tasks_file(str(tasks_file))["emotion"]
    assert declared.labels == () and declared.hub_path == str(tmp_path / "emotion_data")
    task = resolve_source(declared)
    assert task.labels == tuple(EMOTIONS) and task.num_labels == 4 and task.metric == "macro_f1"
    train, dev = (read_split(task, split, str(tmp_path / "unused-data-dir")) for split in ("train", "dev"))
    assert [task.labels[i] for i in train.label] == ["anger", "joy", "optimism", "sadness", "joy"]
    assert dev.text_a == ["so sad", "i am so angry"] and [task.labels[i] for i in dev.label] == ["sadness", "anger"]
    assert read_split(declared, "train", None).label == train.label  # the declared spec reads the same rows


def test_declared_labels_must_agree_with_the_classlabel(tmp_path):
    write_emotion(tmp_path / "emo")
    agreeing = declare(tmp_path, f"{EMOTION}, labels: [{', '.join(EMOTIONS)}], source: {{dataset: emo}}")
    assert resolve_source(load_tasks_file(str(agreeing))["emotion"]).labels == tuple(EMOTIONS)
    shuffled = declare(tmp_path, f"{EMOTION}, labels: [joy, anger, optimism, sadness], source: {{dataset: emo}}")
    with pytest.raises(UserError, match=r"task 'emotion' \(dataset .*emo\): 'labels' \(joy, anger, optimism, "
                       r"sadness\) differ from the source's ClassLabel names \(anger, joy, optimism, sadness\)"):
        resolve_source(load_tasks_file(str(shuffled))["emotion"])


def test_classlabel_with_label_names_renames_and_a_wrong_metric_is_refused_once_labels_are_known(tmp_path):
    write_emotion(tmp_path / "emo")
    renamed = declare(tmp_path, f"{EMOTION}, label_names: [a, j, o, s], source: {{dataset: emo}}")
    task = resolve_source(load_tasks_file(str(renamed))["emotion"])
    assert task.labels == tuple(EMOTIONS) and task.kind.names(task) == ("a", "j", "o", "s")
    binary_metric = declare(tmp_path, f"{EMOTION}, main_metric: f1, source: {{dataset: emo}}")
    declared = load_tasks_file(str(binary_metric))["emotion"]  # 'f1' is possible until the labels are known
    with pytest.raises(UserError, match=r"main_metric 'f1' is not a metric of this classification task; choose "
                       r"one of accuracy, mcc, macro_f1"):
        resolve_source(declared)


def test_integer_labels_without_classlabel_or_labels_ask_for_labels(tmp_path):
    write_emotion(tmp_path / "plain", Features({"text": Value("string"), "label": Value("int64")}))
    task = load_tasks_file(str(declare(tmp_path, f"{EMOTION}, source: {{dataset: plain}}")))["emotion"]
    with pytest.raises(UserError, match=r"task 'emotion' \(dataset .*plain\): label column 'label' holds "
                       r"Value\('int64'\), not a datasets ClassLabel; declare 'labels' \(the values in order\) or "
                       r"'label_names'"):
        resolve_source(task)
    named = declare(tmp_path, f"{EMOTION}, label_names: [{', '.join(EMOTIONS)}], source: {{dataset: plain}}")
    task = resolve_source(load_tasks_file(str(named))["emotion"])
    assert read_split(task, "dev", None).label == [3, 0] and task.kind.names(task) == tuple(EMOTIONS)


def test_string_labels_of_a_source_read_as_in_files(tmp_path):
    (tmp_path / "csvs").mkdir()
    (tmp_path / "csvs" / "train.csv").write_text("text,label\ngood,pos\nbad,neg\n")
    (tmp_path / "csvs" / "validation.csv").write_text("text,label\nfine,pos\n")
    entry = "name: s, type: classification, text_columns: [text], label_column: label, source: {dataset: csvs}"
    task = load_tasks_file(str(declare(tmp_path, entry)))["s"]
    with pytest.raises(UserError, match=r"label column 'label' holds Value\('(large_)?string'\), not a datasets "
                       r"ClassLabel"):
        resolve_source(task)
    task = resolve_source(load_tasks_file(str(declare(tmp_path, f"{entry}, labels: [neg, pos]")))["s"])
    assert read_split(task, "train", None).label == [1, 0]
    (tmp_path / "csvs" / "validation.csv").write_text("text,label\nfine,meh\n")
    with pytest.raises(UserError, match=r"label 'meh' of task 's' is not in its label list \(neg, pos\)"):
        read_split(task, "dev", None)


def test_token_tags_as_a_sequence_of_classlabel(tmp_path):
    tags = ["O", "B-PER", "I-PER"]
    features = Features({"tokens": Sequence(Value("string")), "ner_tags": Sequence(ClassLabel(names=tags))})
    (tmp_path / "ner").mkdir()
    for split in ("train", "validation"):
        rows = {"tokens": [["ann", "lee", "runs"]], "ner_tags": [[1, 2, 0]]}
        datasets.Dataset.from_dict(rows, features=features).to_parquet(str(tmp_path / "ner" / f"{split}.parquet"))
    entry = "name: ner, type: token_classification, tags_column: ner_tags, source: {dataset: ner}"
    task = resolve_source(load_tasks_file(str(declare(tmp_path, entry)))["ner"])
    assert task.labels == tuple(tags) and task.metric == "f1"
    assert read_split(task, "dev", None).tags == [[1, 2, 0]]
    without = "name: ner, type: token_classification, source: {dataset: ner}"  # tags_column 'tags' is not there
    with pytest.raises(UserError, match=r"tags column 'tags' is missing \(columns: tokens, ner_tags\)"):
        resolve_source(load_tasks_file(str(declare(tmp_path, without)))["ner"])


DECLARATION_ERRORS = [
    (f"{EMOTION}, source: {{dataset: d, split: train}}",
     r"TASKS_FILE .*tasks.yaml, task #1 \(emotion\): source key\(s\) split are not allowed; allowed: dataset, "
     r"config, train, dev, test"),
    (f"{EMOTION}, source: {{dataset: d}}, train_file: t.csv",
     r"task #1 \(emotion\): give either 'source' or 'train_file'/'dev_file', not both"),
    (f"{EMOTION}, source: cardiffnlp/tweet_eval", r"'source' must be a mapping with at least 'dataset'"),
    (f"{EMOTION}, source: {{config: emotion}}", r"'source' must be a mapping with at least 'dataset'"),
    (f"{EMOTION}, source: {{dataset: d}}, encoding: latin-1", r"encoding describe\(s\) files; a task with a "
     r"'source' takes none \(only header/column_names, for a folder of csv files\)"),
    (f"{EMOTION}, source: {{dataset: d}}, header: false", r"header: false needs column_names"),
    (f"{EMOTION}, labels: [x]", r"missing the field\(s\) train_file, dev_file"),  # no source: files stay required
    (f"{EMOTION}, labels: [x], source: {{dataset: d}}", r"needs 'labels' \(or 'label_names'\), at least two"),
]


@pytest.mark.parametrize(("entry", "message"), DECLARATION_ERRORS)
def test_bad_source_declarations(tmp_path, entry, message):
    with pytest.raises(UserError, match=message):
        load_tasks_file(str(declare(tmp_path, entry)))


def test_a_missing_split_names_it_the_dataset_and_the_task(tmp_path):
    write_emotion(tmp_path / "emo")
    task = load_tasks_file(str(declare(tmp_path, f"{EMOTION}, source: {{dataset: emo, dev: dev}}")))["emotion"]
    with pytest.raises(UserError, match=r"task 'emotion': could not load split 'dev' of the dataset '.*emo' "
                       r"\(Unknown split \"dev\"\. Should be one of \['train', 'validation'\]\.\)") as err:
        read_split(resolve_source(task), "dev", None)
    assert "DATA_DIR" not in str(err.value)


def test_a_missing_dataset_is_one_error_line(tmp_path):
    tasks_file = declare(tmp_path, f"{EMOTION}, source: {{dataset: ./no_such_dir, config: emotion}}")
    env = {"TASKS_FILE": str(tasks_file), "OUTPUT_DIR": str(tmp_path / "out"), "MODEL_NAME": "demo",
           "HF_DATASETS_CACHE": str(tmp_path / "hf-cache")}
    line = one_error_line(run_cli("train", env=env))
    missing = tmp_path / "no_such_dir"  # relative to the TASKS_FILE, not the working directory
    assert line.startswith(f"error: task 'emotion': could not load split 'train' of the dataset '{missing}' "
                           "(config 'emotion') (Couldn't find any data file"), line
    assert "a directory relative to the TASKS_FILE or a hub dataset id" in line and "DATA_DIR" not in line
    assert not (tmp_path / "out").exists()


def test_check_reports_the_classlabel_names(tmp_path):
    from trainer.check import check

    write_emotion(tmp_path / "emo")
    tasks_file = declare(tmp_path, f"{EMOTION}, source: {{dataset: emo}}")
    settings = settings_of(tasks_file=str(tasks_file), model_name="demo")
    report = check(settings)
    assert "emotion (classification, main metric macro_f1):" in report
    assert "labels: anger: 1, joy: 2, optimism: 1, sadness: 1" in report


@pytest.mark.slow
def test_train_from_a_source_exports_the_classlabel_names(tmp_path):
    write_emotion(tmp_path / "emo", repeat=8)
    tasks_file = declare(tmp_path, f"{EMOTION}, source: {{dataset: emo}}")
    out = tmp_path / "out"
    env = quick_env(out, TASKS_FILE=str(tasks_file), MODEL_NAME="demo", MAX_STEPS="2",
                    HF_DATASETS_CACHE=str(tmp_path / "hf-cache"))
    result = run_cli("train", env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    config = json.loads((out / "export" / "emotion" / "config.json").read_text())
    assert config["id2label"] == {str(i): name for i, name in enumerate(EMOTIONS)}
    assert set(json.loads((out / "metrics.json").read_text())["tasks"]) == {"emotion"}

"""REPORT_TO: the trackers the Trainer logs to, checked before anything is read or written."""

import importlib.util

import pytest

from trainer.errors import UserError
from trainer.settings import load_settings

from .test_first_hour import one_error_line
from .tiny import run_cli


def test_report_to_is_a_checked_comma_list():
    settings, _ = load_settings({}, environ={}, dotenv_path=None)
    assert settings.report_to == ("tensorboard",)
    settings, _ = load_settings({}, environ={"REPORT_TO": "tensorboard, mlflow"}, dotenv_path=None)
    assert settings.report_to == ("tensorboard", "mlflow")
    with pytest.raises(UserError, match=r"REPORT_TO='comet' is not allowed; choose one or more of: tensorboard, "
                                        r"wandb, mlflow, none"):
        load_settings({}, environ={"REPORT_TO": "tensorboard,comet"}, dotenv_path=None)
    with pytest.raises(UserError, match=r"'none' turns every tracker off; give it alone"):
        load_settings({}, environ={"REPORT_TO": "none,wandb"}, dotenv_path=None)


def test_report_to_reaches_the_training_arguments(tmp_path):
    from trainer.train import training_arguments

    for value, expected in (("tensorboard", ["tensorboard"]), ("none", [])):
        settings, _ = load_settings({"report_to": value, "output_dir": str(tmp_path / "out")}, environ={},
                                    dotenv_path=None)
        assert training_arguments(settings).report_to == expected
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("tracker", ["wandb", "mlflow"])
def test_a_tracker_that_is_not_installed_stops_train_with_one_line(tmp_path, tracker):
    if importlib.util.find_spec(tracker) is not None:
        pytest.skip(f"{tracker} is installed here")
    output = tmp_path / "out"
    result = run_cli("train", env={"OUTPUT_DIR": str(output), "REPORT_TO": f"tensorboard,{tracker}", "MAX_STEPS": "1"})
    assert one_error_line(result) == f"error: REPORT_TO={tracker} needs the {tracker} package: pip install {tracker}"
    assert not output.exists()

"""QUANTIZE=4bit|8bit (QLoRA): the pieces that run without a GPU. The refusals on CPU are rows of
tests/test_bad_input.py; loading a quantized base needs CUDA and bitsandbytes and is not run here."""

import importlib.util

import pytest
import torch

from trainer.errors import UserError
from trainer.model.loading import load_encoder
from trainer.model.quantize import BITSANDBYTES, check_quantize, quantization_config


def test_no_quantize_needs_nothing():
    check_quantize(None, cuda=False)


@pytest.mark.skipif(importlib.util.find_spec("bitsandbytes") is not None, reason="bitsandbytes is installed")
def test_a_gpu_without_bitsandbytes_is_one_line():
    with pytest.raises(UserError) as err:
        check_quantize("4bit", cuda=True)
    assert str(err.value) == f"QUANTIZE=4bit needs the bitsandbytes package: pip install {BITSANDBYTES}"


def test_the_configs_are_qloras(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    four = quantization_config("4bit")
    assert four.load_in_4bit and four.bnb_4bit_quant_type == "nf4" and four.bnb_4bit_use_double_quant
    assert four.bnb_4bit_compute_dtype == torch.bfloat16
    assert quantization_config("8bit").load_in_8bit


def test_the_demo_model_has_no_weights_to_quantize():
    with pytest.raises(UserError, match=r"QUANTIZE=4bit quantizes the weights MODEL_NAME loads"):
        load_encoder("demo", quantize="4bit")

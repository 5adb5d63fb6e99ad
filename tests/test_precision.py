"""trainer.precision: bf16 trains under autocast with float32 weights and float32 evaluation, and
auto chooses without disturbing the run it chooses for."""

import json
import shlex
from pathlib import Path

import pytest
import torch

from mlp_sweep.errors import ConfigError
from mlp_sweep.training.config import validate
from mlp_sweep.training.data import Split, Splits
from mlp_sweep.training.engine import fit_model
from mlp_sweep.training.model import MLP
from mlp_sweep.training.precision import cpu_flags, native_bf16, training_dtype

from conftest import SMALL_DATA, compose_config, run_here

CPU = torch.device("cpu")
BF16_DOC = (Path(__file__).resolve().parents[1] / "docs" / "bf16.md").read_text()


def blobs(n: int, seed: int) -> Split:
    generator = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, 4, (n,), generator=generator)
    centres = torch.randn(4, 1, 8, 8, generator=torch.Generator().manual_seed(99)) * 2
    return Split(centres[labels] + torch.randn(n, 1, 8, 8, generator=generator), labels)


def trained(dtype: torch.dtype) -> tuple[MLP, list]:
    torch.manual_seed(0)
    model = MLP((1, 8, 8), [256, 256], 4)
    data = Splits(blobs(2048, 1), blobs(512, 2), blobs(512, 3))
    history = fit_model(model, torch.optim.AdamW(model.parameters(), lr=1e-3), data, epochs=3,
                  batch_size=128, seed=0, progress=False,
                  dtype=dtype)
    return model, history


def test_bf16_trains_float32_weights_to_the_accuracy_fp32_reaches():
    fp32_model, fp32 = trained(torch.float32)
    bf16_model, bf16 = trained(torch.bfloat16)
    assert all(p.dtype == torch.float32 for p in bf16_model.parameters())
    # Different numbers, the same learning: bf16's products differ, its accuracy does not.
    assert fp32[-1].train_loss != bf16[-1].train_loss
    assert bf16[-1].val_accuracy == pytest.approx(fp32[-1].val_accuracy, abs=0.02)
    assert bf16[-1].val_accuracy > 0.9


def test_auto_leaves_the_model_and_the_random_streams_as_it_found_them():
    torch.manual_seed(5)
    model = MLP((1, 28, 28), [512], 10, dropout=0.3)
    weights = {k: v.clone() for k, v in model.state_dict().items()}
    rng = torch.get_rng_state()
    dtype = training_dtype("auto", CPU, model, 256, (1, 28, 28))
    assert dtype in (torch.float32, torch.bfloat16)
    assert dtype == torch.float32 or native_bf16(CPU)  # bf16 only where computed natively
    assert torch.equal(torch.get_rng_state(), rng)
    assert all(torch.equal(v, weights[k]) for k, v in model.state_dict().items())
    assert all(p.grad is None for p in model.parameters())


def test_cpu_flags_are_read_from_cpuinfo(tmp_path):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nflags\t\t: fpu sse2 avx512f avx512_bf16\n")
    assert {"avx512_bf16", "sse2"} <= cpu_flags(cpuinfo)
    assert cpu_flags(tmp_path / "absent") == set()


@pytest.mark.parametrize("value, shown", [("fp16", "'fp16'"), ("float32", "'float32'"),
                                          ("16", "16"), ("true", "True")])
def test_an_unknown_precision_is_one_line_naming_what_is_allowed(value, shown):
    with pytest.raises(ConfigError, match=rf"^trainer.precision={shown} is not allowed; "
                                          "allowed: fp32, bf16, auto$"):
        validate(compose_config(f"trainer.precision={value}"))


def test_a_bf16_run_says_so_in_its_log_and_its_metrics(tmp_path, small_root):
    result = run_here("trainer.epochs=1", "trainer.precision=bf16", *SMALL_DATA,
                      f"dataset.root={small_root}", "hydra.run.dir=run", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "training in bf16" in result.stdout + result.stderr
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["precision"] == "bf16" and metrics["test_accuracy"] > 0.5


def test_the_readmes_bf16_command_runs_as_written(tmp_path, mnist_root):
    [command] = [line for line in BF16_DOC.splitlines()
                 if line.startswith(".venv/bin/python -m mlp_sweep.train")
                 and "trainer.precision=bf16" in line]
    (tmp_path / "data").symlink_to(mnist_root)  # the config's dataset.root, ./data
    result = run_here(*shlex.split(command)[3:], cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    [metrics_file] = (tmp_path / "outputs").glob("*/*/metrics.json")
    metrics = json.loads(metrics_file.read_text())
    assert metrics["precision"] == "bf16" and metrics["test_accuracy"] > 0.95


def test_a_study_resumes_in_another_precision():
    # How a run computes, like its device: a study started in fp32 takes bf16 trials.
    from hydra import compose, initialize_config_module

    from mlp_sweep.sweeping.study_settings import study_settings

    def settings(precision: str) -> dict:  # as a sweep under the presets records them
        with initialize_config_module(config_module="mlp_sweep.conf"):
            cfg = compose("train", return_hydra_config=True,
                          overrides=["hparams_search=optuna", f"trainer.precision={precision}"])
        return study_settings(cfg, [], cfg.hydra.sweeper.execution_keys)

    assert settings("bf16") == settings("fp32")

"""The docs' Python and config examples, run as written: train from Python or a notebook, the
sweeper in your own app, and a new dataset as one config file and one registered loader."""

import re
from pathlib import Path

import pytest
from hydra import compose, initialize_config_module

from mlp_sweep.train import train
from mlp_sweep.training import data

from conftest import as_a_new_process, write_fashion_mnist

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"


def examples(page: str, language: str, containing: str) -> list[str]:
    """The fenced `language` blocks of docs/`page` that contain `containing`, dedented."""
    text = (DOCS / page).read_text()
    blocks = re.findall(rf"^( *)```{language}\n(.*?)^\1```", text, re.S | re.M)
    return [re.sub(rf"^{indent}", "", body, flags=re.M) for indent, body in blocks
            if containing in body]


def test_the_readme_app_is_the_tested_one():
    [app] = examples("own-app.md", "python", "# my_app.py")
    assert app == (ROOT / "tests" / "sweeper_app" / "my_app.py").read_text()


@pytest.mark.parametrize("hydra_node", [False, True])
def test_train_from_python_or_a_notebook(tmp_path, mnist_root, hydra_node):
    [example] = [e for e in examples("python-api.md", "python", "from mlp_sweep.train import train")
                 if ("return_hydra_config=True" in e) == hydra_node]
    (tmp_path / "data").symlink_to(mnist_root)  # the config's dataset.root, ./data
    with as_a_new_process(tmp_path) as (out, _):
        exec(example, {"__name__": "__main__"})  # as a notebook cell or `python -c` runs it
    written = sorted(p.name for p in (tmp_path / "outputs" / "notebook").glob("*")) \
        if hydra_node else []
    if hydra_node:
        assert written == ["metrics.csv", "metrics.json", "model.pt", "status.json"]
    else:
        assert re.search(r"test accuracy 9\d\.\d\d%", out.getvalue()), out.getvalue()
        assert sorted(p.name for p in tmp_path.iterdir()) == ["data"]  # nothing written


def test_a_new_dataset_is_one_config_file_and_one_registered_loader(tmp_path):
    [config] = examples("configuration.md", "yaml", "# conf/dataset/kmnist.yaml")
    [loader] = examples("configuration.md", "python", '@dataset_loader("kmnist")')
    (tmp_path / "conf" / "dataset").mkdir(parents=True)
    (tmp_path / "conf" / "dataset" / "kmnist.yaml").write_text(config)
    exec(loader, vars(data).copy())  # as if written in mlp_sweep/training/data.py
    try:
        write_fashion_mnist(tmp_path / "data", 2000, 500, learnable=True, folder="KMNIST")
        with initialize_config_module("mlp_sweep.conf"):
            cfg = compose("train", overrides=[
                f"hydra.searchpath=[file://{tmp_path / 'conf'}]", "dataset=kmnist",
                f"dataset.root={tmp_path / 'data'}", "trainer.epochs=1", "trainer.progress=false"])
        assert cfg.dataset.name == "kmnist" and list(cfg.dataset.input_shape) == [1, 28, 28]
        assert train(cfg) > 0.5  # read through torchvision's KMNIST class from the files written
    finally:
        data.LOADERS.pop("kmnist", None)

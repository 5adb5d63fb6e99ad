"""The checkpoint benchmark (benchmarks/checkpoints.py) on one small model: what it times and
writes, so that `make bench-checkpoints` keeps working."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import checkpoints  # noqa: E402


def test_the_benchmark_times_saves_and_store_copies_and_reports_them(tmp_path, mnist_root,
                                                                     monkeypatch):
    monkeypatch.setattr(checkpoints, "MODELS", (("1 x 32", 1, 32, "none"),))
    monkeypatch.setattr(checkpoints, "EPOCHS", 3)
    monkeypatch.setattr(checkpoints, "REPEATS", 1)
    [result] = checkpoints.measure(mnist_root, tmp_path).values()
    # A checkpoint after each epoch but the last, in the two modes that write them; copied to
    # the store in one of them.
    assert len(result["saves"]) == 2 and len(result["copies"]) == 2
    assert 0 < result["checkpoint_mb"] < 1  # 25 k weights and AdamW's two moments
    assert all(len(gaps) == 2 for gaps in result["epoch_gaps"].values())  # epoch 1 left out
    assert not list((tmp_path / "1x32_store_0" / "store").iterdir())  # copies removed at the end
    table = checkpoints.markdown({"machine": "m", "date": "d", "models": {"1 x 32": result}})
    assert "| 1 x 32 | 0 MB |" in table and "| 1 x 32 | 25 |" in table
    from mlp_sweep.training.checkpoint import Checkpoints
    assert Checkpoints.save.__qualname__ == "Checkpoints.save"  # the timer is gone

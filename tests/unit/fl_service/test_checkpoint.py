from pathlib import Path

import torch

from fl_service.checkpoint import load_checkpoint, save_checkpoint, save_final_model


def state() -> dict[str, torch.Tensor]:
    return {"w": torch.arange(6, dtype=torch.float32).reshape(2, 3), "n": torch.tensor(4)}


def test_no_checkpoint_means_a_fresh_start(tmp_path: Path) -> None:
    assert load_checkpoint(tmp_path) is None


def test_checkpoint_round_trips_model_round_and_history(tmp_path: Path) -> None:
    history = [{"global_round": 1, "accuracy": 0.5, "loss": 1.0, "participants": ["a"]}]
    save_checkpoint(tmp_path, state(), 1, history)
    history2 = [*history, {"global_round": 2, "accuracy": 0.7, "loss": 0.6, "participants": []}]
    save_checkpoint(tmp_path, {k: v + 1 for k, v in state().items()}, 2, history2)
    loaded = load_checkpoint(tmp_path)
    assert loaded["round"] == 2 and loaded["history"] == history2
    assert torch.equal(loaded["model"]["w"], state()["w"] + 1)
    # Written through a temporary file that is renamed into place: nothing else is left behind.
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint.pt"]


def test_final_model_is_a_state_dict_at_an_absolute_path(tmp_path: Path) -> None:
    path = save_final_model(tmp_path, state())
    assert path.is_absolute() and path.name == "final_model.pt"
    loaded = torch.load(path, weights_only=True)
    assert set(loaded) == {"w", "n"} and torch.equal(loaded["w"], state()["w"])


def test_the_strategy_state_travels_as_bytes_with_the_checkpoint(tmp_path: Path) -> None:
    save_checkpoint(tmp_path, state(), 3, [], strategy_state=b"\x80\x04opaque")
    assert load_checkpoint(tmp_path)["strategy_state"] == b"\x80\x04opaque"
    # A checkpoint written before strategies were kept reads as one without a state.
    torch.save({"model": state(), "round": 1, "history": []}, tmp_path / "checkpoint.pt")
    assert load_checkpoint(tmp_path)["strategy_state"] is None

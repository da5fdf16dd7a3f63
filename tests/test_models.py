import os
import pickle

import pytest
import torch

from defpert.errors import DefpertError
from defpert.models import ARCHITECTURES, build_model, load_checkpoint, read_card, save_checkpoint


@pytest.mark.parametrize("name", sorted(ARCHITECTURES))
@pytest.mark.parametrize("shape", [(1, 28, 28), (1, 8, 8)])
def test_every_model_maps_pixels_to_logits(name, shape):
    model = build_model(name, shape, 10)
    assert isinstance(model, torch.nn.Module)
    assert model(torch.rand(3, *shape)).shape == (3, 10)


def test_normalisation_is_inside_the_model():
    model = build_model("mlp", (1, 8, 8), 10, mean=0.5, std=0.25)
    norm = model[0]
    x = torch.full((1, 1, 8, 8), 0.75)
    assert torch.allclose(norm(x), torch.ones_like(x))
    assert {"0.mean", "0.std"} <= set(model.state_dict())


def test_unknown_model():
    with pytest.raises(DefpertError, match="unknown model 'resnet'"):
        build_model("resnet")


def _card(shape=(1, 8, 8)):
    return {
        "dataset": "digits",
        "architecture": "cnn",
        "input_shape": list(shape),
        "num_classes": 10,
        "normalization": {"mean": 0.3, "std": 0.4},
    }


def test_checkpoint_round_trip(tmp_path):
    model = build_model("cnn", (1, 8, 8), 10, mean=0.3, std=0.4)
    save_checkpoint(model, tmp_path, _card())
    loaded, card = load_checkpoint(tmp_path, expect_input_shape=(1, 8, 8))
    x = torch.rand(4, 1, 8, 8)
    model.eval()
    assert torch.equal(model(x), loaded(x))
    assert card["library_versions"]["torch"] == torch.__version__ and "date" in card
    assert read_card(tmp_path)["architecture"] == "cnn"


# "meta" stands in for a GPU on a machine without one: a checkpoint loaded for a device must
# live there, or every attack on it silently runs on the CPU (`dp --device cuda` once did)
DEVICES = ["meta"] + (["cuda"] if torch.cuda.is_available() else [])


@pytest.mark.parametrize("device", DEVICES)
def test_a_checkpoint_is_loaded_onto_the_requested_device(tmp_path, device):
    from defpert.runtime.devices import model_device

    save_checkpoint(build_model("cnn", (1, 8, 8), 10), tmp_path, _card())
    loaded, _ = load_checkpoint(tmp_path, map_location=device)
    assert model_device(loaded).type == device
    assert {t.device.type for t in [*loaded.parameters(), *loaded.buffers()]} == {device}


def test_checkpoint_for_other_input_shape_is_refused(tmp_path):
    save_checkpoint(build_model("cnn", (1, 8, 8), 10), tmp_path, _card())
    with pytest.raises(DefpertError, match=r"made for inputs of shape \(1, 8, 8\)"):
        load_checkpoint(tmp_path, expect_input_shape=(1, 28, 28))


def test_card_naming_another_architecture_is_refused(tmp_path):
    save_checkpoint(build_model("cnn", (1, 8, 8), 10), tmp_path, {**_card(), "architecture": "mlp"})
    with pytest.raises(
        DefpertError, match="does not match architecture 'mlp': missing 2.bias \\(and 13 more\\)"
    ):
        load_checkpoint(tmp_path)


def test_a_weight_of_another_shape_is_named(tmp_path):
    save_checkpoint(build_model("cnn", (1, 8, 8), 10), tmp_path, {**_card(), "num_classes": 3})
    with pytest.raises(
        DefpertError, match=r"11.bias has shape \(10,\), the architecture \(3,\) \(and 1 more\)"
    ):
        load_checkpoint(tmp_path)


def test_missing_and_foreign_checkpoints(tmp_path):
    with pytest.raises(DefpertError, match="does not exist"):
        load_checkpoint(tmp_path / "nope")
    (tmp_path / "model.json").write_text('{"hello": 1}')
    with pytest.raises(DefpertError, match="not a defpert checkpoint"):
        load_checkpoint(tmp_path)


class _RunsCommand:
    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_pickle_that_runs_a_command_is_refused(tmp_path):
    marker = tmp_path / "pwned"
    save_checkpoint(build_model("cnn", (1, 8, 8), 10), tmp_path, _card())
    (tmp_path / "model.safetensors").write_bytes(pickle.dumps(_RunsCommand(str(marker))))
    with pytest.raises(DefpertError, match="not a valid safetensors file"):
        load_checkpoint(tmp_path)
    assert not marker.exists()

"""Real training on a slice of real MNIST: the model must learn."""

import torch

from defpert import TrainConfig, train


def test_cnn_learns_real_mnist(mnist_dir, tmp_path):
    state = torch.get_rng_state()
    result = train(
        TrainConfig(dataset="mnist", model="cnn", epochs=1, limit=4000, seed=0),
        out=tmp_path,
        data_dir=mnist_dir,
        device="cpu",
        progress=False,
    )
    assert result.metrics["test_accuracy"] > 0.9  # chance is 0.1
    assert result.metrics["n_train"] == 4000 and result.metrics["n_test"] == 10000
    assert torch.equal(state, torch.get_rng_state())  # the global RNG is left alone
    assert (tmp_path / "model.safetensors").is_file()

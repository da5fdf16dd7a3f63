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


def test_commands_side_by_side_share_one_default_training(monkeypatch, tmp_path):
    """A second command on a fresh cache waits for the first one's training of the default
    model and reuses it, instead of refusing (or training it again)."""
    import fcntl
    import importlib
    import threading
    import time

    train_module = importlib.import_module("defpert.train")

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    run = train_module.default_cache_dir() / "models" / "digits-cnn-e40-s0"
    run.parent.mkdir(parents=True)
    lock = open(run.parent / f".{run.name}.lock", "a+")  # noqa: SIM115 - the first command
    fcntl.flock(lock.fileno(), fcntl.LOCK_EX)

    def first_command_finishes() -> None:
        time.sleep(1.0)
        run.mkdir()
        (run / "model.safetensors").write_bytes(b"weights")
        (run / "model.json").write_text("{}")
        fcntl.flock(lock.fileno(), fcntl.LOCK_UN)

    def trained_twice(*_a, **_k):
        raise AssertionError("the default model was trained a second time")

    monkeypatch.setattr(train_module, "train", trained_twice)
    said: list[str] = []
    other = threading.Thread(target=first_command_finishes)
    other.start()
    started = time.monotonic()
    assert train_module.default_checkpoint("digits", report=said.append) == run
    other.join()
    lock.close()
    assert time.monotonic() - started >= 0.9  # it waited for the first command
    assert said == [
        f"waiting for another defpert command to finish training the default cnn into {run}"
    ]

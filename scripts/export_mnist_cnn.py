"""Export ccexam's pretrained MNIST CNN to ONNX (run once; the result is committed).

Source: the `ccexam` package on PyPI (MIT licence), file ccexam/weights/mnist.pth,
architecture ccexam.models.MNISTNet (Conv-ReLU-MaxPool x2, Linear-ReLU-Linear).
Needs `pip install torch==2.13.0 ccexam --no-deps`; torchvision is not needed.

    python scripts/export_mnist_cnn.py trtptq/assets/mnist_cnn.onnx
"""

import importlib.util
import pathlib
import sys

import torch
from torch import nn


def mnist_net() -> nn.Module:
    # Same layer layout as ccexam.models.MNISTNet (importing ccexam pulls torchvision).
    return nn.Sequential(
        nn.Sequential(
            nn.Conv2d(1, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        ),
        nn.Flatten(1),
        nn.Sequential(nn.Linear(64 * 7 * 7, 128), nn.ReLU(), nn.Linear(128, 10)),
    )


def main(out: str) -> None:
    weights = pathlib.Path(importlib.util.find_spec("ccexam").submodule_search_locations[0]) / "weights" / "mnist.pth"
    state = torch.load(weights, map_location="cpu")
    renamed = {k.replace("features.", "0.").replace("classifier.", "2."): v for k, v in state.items()}
    model = mnist_net()
    model.load_state_dict(renamed)
    model.eval()
    torch.onnx.export(
        model, (torch.zeros(1, 1, 28, 28),), out, input_names=["input"], output_names=["logits"],
        dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}}, opset_version=17, dynamo=False,
    )


if __name__ == "__main__":
    main(sys.argv[1])

"""The tutorial's whole script, as written: `python -m benchmarks.tutorial --root DIR --epochs 10`.

FashionMNIST through torchvision with `ToTensor()`, `DataLoader(batch_size=64)` for
train and test, the tutorial's `NeuralNetwork`, `train_loop` and `test_loop`, SGD
lr 1e-3. The harness times it as a process, next to `purestep train`.
"""

from __future__ import annotations

import argparse


def main(argv: list[str] | None = None) -> None:
    """Run the tutorial's training for `--epochs` on the files under `--root`."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.tutorial")
    parser.add_argument("--root", default="data")
    parser.add_argument("--epochs", type=int, default=10)
    args = parser.parse_args(argv)

    import torch
    from torch import nn
    from torch.utils.data import DataLoader
    from torchvision import datasets
    from torchvision.transforms import ToTensor

    from purestep.core.model import NeuralNetwork
    from purestep.core.reference import epoch_header, test_report, train_loop

    def test_loop(dataloader, model, loss_fn):  # the tutorial's, as written
        model.eval()
        size, num_batches = len(dataloader.dataset), len(dataloader)
        test_loss, correct = 0, 0
        with torch.no_grad():
            for X, y in dataloader:
                pred = model(X)
                test_loss += loss_fn(pred, y).item()
                correct += (pred.argmax(1) == y).type(torch.float).sum().item()
        print(test_report(correct / size, test_loss / num_batches))

    training_data = datasets.FashionMNIST(root=args.root, train=True, download=False, transform=ToTensor())
    test_data = datasets.FashionMNIST(root=args.root, train=False, download=False, transform=ToTensor())
    train_dataloader = DataLoader(training_data, batch_size=64)
    test_dataloader = DataLoader(test_data, batch_size=64)

    model = NeuralNetwork()
    learning_rate = 1e-3
    loss_fn = nn.CrossEntropyLoss()
    optimizer = torch.optim.SGD(model.parameters(), lr=learning_rate)
    for t in range(args.epochs):
        print(epoch_header(t))
        train_loop(train_dataloader, model, loss_fn, optimizer)
        test_loop(test_dataloader, model, loss_fn)
    print("Done!")


if __name__ == "__main__":
    main()

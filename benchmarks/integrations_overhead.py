"""Step time of the Lightning and Transformers integrations against the same balancing in a
plain loop (median time per training step, measured inside each framework's own step hooks,
so data loading, validation and logging set-up between steps are left out in all three;
Lightning and its plain loop alternate over 5 rounds, the median of the rounds is reported).
The digits MLP is tiny (a 2 ms step); the same module with a 64-1024-1024 trunk shows how
Lightning's fixed per-step cost shrinks relative to a larger step.

* Lightning: ``examples/lightning_digits.py``'s module (digits MLP, 3 tasks) under
  ``lightning.Trainer`` vs the same forward / ``Balancer.backward`` / ``Adam.step`` loop;
* Transformers: the tiny BERT of the README (classification + tagging) under
  ``BalancedTrainer`` vs a plain loop with AdamW.

    python benchmarks/integrations_overhead.py --method pcgrad --steps 200 \
        --out benchmarks/results/integrations_overhead.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "examples"))
sys.path.insert(0, str(ROOT / "tests"))


def _median_ms(times: list[float]) -> float:
    return 1000 * statistics.median(times[5:] if len(times) > 10 else times)


def _mean_ms(times: list[float]) -> float:
    return 1000 * statistics.fmean(times[5:] if len(times) > 10 else times)


def _lightning_ms(module: Any, train: Any, steps: int) -> float:
    import lightning

    times: list[float] = []

    class Timer(lightning.Callback):  # type: ignore[misc]
        def on_train_batch_start(self, *args: Any) -> None:
            self.begin = time.perf_counter()

        def on_train_batch_end(self, *args: Any) -> None:
            times.append(time.perf_counter() - self.begin)

    trainer = lightning.Trainer(
        max_steps=steps,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[Timer()],
    )
    trainer.fit(module, train)
    return _median_ms(times)


def _loop_ms(step: Any, train: Any, steps: int) -> float:
    times: list[float] = []
    while len(times) < steps:
        for batch in train:
            begin = time.perf_counter()
            step(batch)
            times.append(time.perf_counter() - begin)
            if len(times) == steps:
                break
    return _median_ms(times)


def lightning_pairs(
    method: str, steps: int, hidden: tuple[int, int] = (128, 64), rounds: int = 5
) -> list[tuple[str, float, float]]:
    """(label, Lightning ms, plain-loop ms): the integration, and Lightning's own overhead
    (automatic optimisation of the summed losses vs the same in a plain loop)."""
    import lightning
    from lightning_digits import DigitsModule, loaders  # type: ignore[import-not-found]

    train, _ = loaders()
    module = DigitsModule(method, hidden=hidden)
    optimizer = module.configure_optimizers()

    def balanced(batch: Any) -> None:
        optimizer.zero_grad()
        module.balancer.backward(module.task_losses(batch))
        optimizer.step()

    class Summed(DigitsModule, lightning.LightningModule):  # type: ignore[misc]
        def __init__(self) -> None:
            super().__init__(method, hidden=hidden)
            self.automatic_optimization = True

        def training_step(self, batch: Any, batch_index: int) -> torch.Tensor:
            return sum(self.task_losses(batch).values())  # type: ignore[return-value]

    summed_module = Summed()
    summed_optimizer = summed_module.configure_optimizers()

    def summed(batch: Any) -> None:
        summed_optimizer.zero_grad()
        sum(summed_module.task_losses(batch).values()).backward()  # type: ignore[union-attr]
        summed_optimizer.step()

    size = f"MLP 64-{hidden[0]}-{hidden[1]}"
    # alternate the framework and the plain loop round by round (drift and other load hit
    # both alike) and keep the median of the rounds' medians
    pairs: dict[str, tuple[list[float], list[float]]] = {
        f"lightning {method}, {size}": ([], []),
        f"lightning itself (sum), {size}": ([], []),
    }
    for _ in range(rounds):
        for label, (framework, plain) in pairs.items():
            if "itself" in label:
                framework.append(_lightning_ms(Summed(), train, steps))
                plain.append(_loop_ms(summed, train, steps))
            else:
                framework.append(_lightning_ms(DigitsModule(method, hidden=hidden), train, steps))
                plain.append(_loop_ms(balanced, train, steps))
    return [
        (label, statistics.median(framework), statistics.median(plain))
        for label, (framework, plain) in pairs.items()
    ]


def transformers_pair(method: str, steps: int) -> tuple[float, float]:
    import transformers

    from taskbalance import Balancer
    from taskbalance.integrations.transformers import BalancedTrainer
    from test_transformers import Rows, TwoHeadBert  # type: ignore[import-not-found]

    times: list[float] = []

    class Timer(transformers.TrainerCallback):  # type: ignore[misc]
        def on_step_begin(self, *args: Any, **kwargs: Any) -> None:
            self.begin = time.perf_counter()

        def on_step_end(self, *args: Any, **kwargs: Any) -> None:
            times.append(time.perf_counter() - self.begin)

    model = TwoHeadBert()
    args = transformers.TrainingArguments(
        output_dir="runs/integrations_overhead",
        max_steps=steps,
        per_device_train_batch_size=16,
        learning_rate=1e-3,
        report_to=[],
        use_cpu=True,
        save_strategy="no",
        disable_tqdm=True,
        logging_strategy="no",
        max_grad_norm=0.0,  # the plain loop clips nothing either
    )
    balancer = Balancer(method, model.bert.parameters())
    trainer = BalancedTrainer(
        model=model, args=args, train_dataset=Rows(256), balancer=balancer, callbacks=[Timer()]
    )
    trainer.train()
    framework = _median_ms(times)
    model = TwoHeadBert()
    balancer = Balancer(method, model.bert.parameters())
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    loader = torch.utils.data.DataLoader(Rows(256), batch_size=16, shuffle=True)
    plain: list[float] = []
    while len(plain) < steps:
        for batch in loader:
            begin = time.perf_counter()
            optimizer.zero_grad()
            balancer.backward(model(**batch)["losses"])
            optimizer.step()
            plain.append(time.perf_counter() - begin)
            if len(plain) == steps:
                break
    return framework, _median_ms(plain)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--method", default="pcgrad")
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--out", default="benchmarks/results/integrations_overhead.json")
    args = parser.parse_args()
    torch.set_num_threads(1)
    pairs = lightning_pairs(args.method, args.steps)
    # the same module with a wider trunk: Lightning's per-step cost is fixed, so its share
    # shrinks as the step grows
    pairs += lightning_pairs(args.method, max(50, args.steps // 3), hidden=(1024, 1024))
    pairs.append((f"transformers {args.method}", *transformers_pair(args.method, args.steps)))
    rows = [
        {"integration": label, "framework_ms": fw, "plain_ms": plain, "ratio": fw / plain}
        for label, fw, plain in pairs
    ]
    print(f"{'integration':<40} {'framework ms':>12} {'plain ms':>9} {'ratio':>6}")
    for row in rows:
        print(
            f"{row['integration']:<40} {row['framework_ms']:>12.2f} {row['plain_ms']:>9.2f} "
            f"{row['ratio']:>6.3f}"
        )
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(rows, indent=1))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()

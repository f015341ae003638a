"""Hugging Face Transformers integration (optional extra): a tiny randomly initialised BERT
(no download) with a sequence-classification head on the pooled output and a token-tagging
head on the sequence output, trained by BalancedTrainer; checkpoints carry the balancer."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

transformers = pytest.importorskip("transformers")
pytest.importorskip("accelerate")

from taskbalance import Balancer  # noqa: E402 - after the optional imports
from taskbalance.integrations.transformers import STATE_FILE, BalancedTrainer  # noqa: E402


class TwoHeadBert(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        config = transformers.BertConfig(
            vocab_size=50,
            hidden_size=16,
            num_hidden_layers=1,
            num_attention_heads=2,
            intermediate_size=32,
            max_position_embeddings=16,
            hidden_dropout_prob=0.0,  # deterministic: the step is compared with a plain one
            attention_probs_dropout_prob=0.0,
        )
        self.bert = transformers.BertModel(config)
        self.classifier = nn.Linear(16, 2)
        self.tagger = nn.Linear(16, 3)

    def forward(
        self, input_ids: torch.Tensor, labels: torch.Tensor, tags: torch.Tensor
    ) -> dict[str, Any]:
        out = self.bert(input_ids=input_ids)
        sequence, pooled = out.last_hidden_state, out.pooler_output
        losses = {
            "label": nn.functional.cross_entropy(self.classifier(pooled), labels),
            "tags": nn.functional.cross_entropy(
                self.tagger(sequence).flatten(0, 1), tags.flatten()
            ),
        }
        return {
            "loss": sum(losses.values()),
            "losses": losses,
            "representation": (sequence, pooled),
        }


class Rows(torch.utils.data.Dataset[dict[str, torch.Tensor]]):
    def __init__(self, n: int = 64) -> None:
        generator = torch.Generator().manual_seed(3)
        self.ids = torch.randint(1, 50, (n, 8), generator=generator)
        self.label = (self.ids[:, 0] > 25).long()  # learnable from the first token
        self.tags = (self.ids % 3).long()

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"input_ids": self.ids[i], "labels": self.label[i], "tags": self.tags[i]}


def _trainer(
    model: TwoHeadBert, out: Path, method: str = "mgda", **options: Any
) -> BalancedTrainer:
    args = transformers.TrainingArguments(
        output_dir=str(out),
        per_device_train_batch_size=16,
        learning_rate=5e-3,
        num_train_epochs=options.pop("epochs", 3),
        logging_steps=1,
        save_strategy=options.pop("save_strategy", "no"),
        report_to=[],
        use_cpu=True,
        seed=0,
        disable_tqdm=True,
        **options,
    )
    level = "representation" if method.endswith("@repr") else "parameters"
    balancer = Balancer(method.removesuffix("@repr"), model.bert.parameters(), level=level)  # type: ignore[arg-type]
    return BalancedTrainer(model=model, args=args, train_dataset=Rows(), balancer=balancer)


def test_one_training_step_writes_the_balanced_gradient(tmp_path: Path) -> None:
    model = TwoHeadBert()
    reference = copy.deepcopy(model)
    trainer = _trainer(model, tmp_path)
    rows = Rows()
    batch = {"input_ids": rows.ids[:16], "labels": rows.label[:16], "tags": rows.tags[:16]}
    trainer.training_step(model, dict(batch))
    out = reference(**batch)
    Balancer("mgda", reference.bert.parameters()).backward(out["losses"])
    for p, q in zip(model.parameters(), reference.parameters(), strict=True):
        if q.grad is None:
            assert p.grad is None
        else:
            torch.testing.assert_close(p.grad, q.grad, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("method", ["mgda", "upgrad@repr"])
def test_balanced_training_learns_and_logs(method: str, tmp_path: Path) -> None:
    trainer = _trainer(TwoHeadBert(), tmp_path, method)
    trainer.train()
    logs = [row for row in trainer.state.log_history if "loss" in row]
    assert "balance/weight/label" in logs[0]
    first, last = logs[0]["loss"], logs[-1]["loss"]
    assert last < first  # it learns


def test_checkpoints_carry_the_balancer_and_resume_restores_it(tmp_path: Path) -> None:
    trainer = _trainer(TwoHeadBert(), tmp_path, "uw", epochs=1, save_strategy="epoch")
    trainer.train()
    learned = trainer.balancer.state_dict()["method"]["log_scales"]
    checkpoint = sorted(tmp_path.glob("checkpoint-*"))[-1]
    assert (checkpoint / STATE_FILE).is_file()
    resumed = _trainer(TwoHeadBert(), tmp_path, "uw", epochs=1, save_strategy="epoch")
    resumed.train(resume_from_checkpoint=str(checkpoint))  # already at the end: restores only
    torch.testing.assert_close(resumed.balancer.state_dict()["method"]["log_scales"], learned)


@pytest.mark.parametrize("reentrant", [True, False])
def test_gradient_checkpointing_is_exact_or_refused(reentrant: bool) -> None:
    """Transformers' activation checkpointing: the reentrant kind hid the encoder's parameters
    from the balancer (they got no gradient); the non-reentrant kind gives the step without
    checkpointing."""
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(1, 50, (4, 8), generator=generator)
    labels, tags = torch.tensor([0, 1, 0, 1]), ids % 3

    def gradients(checkpointing: bool) -> list[torch.Tensor]:
        model = TwoHeadBert()
        model.train()
        if checkpointing:  # (Transformers 5's name; gradient_checkpointing_enable before)
            enable = getattr(model.bert, "activation_checkpointing_enable", None)
            if enable is not None:
                enable(activation_checkpointing_kwargs={"use_reentrant": reentrant})
            else:
                model.bert.gradient_checkpointing_enable(
                    gradient_checkpointing_kwargs={"use_reentrant": reentrant}
                )
        out = model(ids, labels, tags)
        Balancer("mgda", model.bert.parameters()).backward(out["losses"])
        return [torch.zeros_like(p) if p.grad is None else p.grad for p in model.bert.parameters()]

    expected = gradients(checkpointing=False)
    if reentrant:
        with pytest.raises(ValueError, match="'use_reentrant': False"):
            gradients(checkpointing=True)
        return
    for got, want in zip(gradients(checkpointing=True), expected, strict=True):
        torch.testing.assert_close(got, want)

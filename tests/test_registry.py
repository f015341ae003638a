import numpy as np
import pytest

import taskbalance
from taskbalance import methods
from taskbalance.engine.needs import Need


def test_available_lists_the_foundation_methods() -> None:
    names = methods.available()
    for name in ["ew", "fixed", "loss_ratio", "metric_weighting", "pcgrad", "mgda"]:
        assert name in names
    assert names == sorted(names)


def test_create_by_name_returns_a_fresh_instance_with_hparams() -> None:
    first = methods.create("pcgrad", seed=3)
    second = methods.create("pcgrad", seed=3)
    assert first is not second
    assert first.hparams() == {"seed": 3, "reduction": "sum"}
    assert repr(first) == "PCGrad(seed=3, reduction='sum')"


def test_unknown_method_suggests_the_closest_names() -> None:
    with pytest.raises(ValueError, match=r"unknown method 'pcgard'.*Did you mean 'pcgrad'"):
        methods.create("pcgard")


def test_unknown_method_lists_all_available() -> None:
    with pytest.raises(ValueError, match=r"Available: .*mgda"):
        methods.create("zzzzzz")


def test_names_are_normalised() -> None:
    assert methods.create("Loss-Ratio").name == "loss_ratio"


def test_unknown_hyperparameter_lists_the_valid_ones() -> None:
    with pytest.raises(
        ValueError, match=r"no hyperparameter 'sed'.*Did you mean 'seed'.*seed, reduction"
    ):
        methods.create("pcgrad", sed=1)
    with pytest.raises(ValueError, match="Valid hyperparameters: none"):
        methods.create("ew", alpha=1.0)


def test_bad_hyperparameter_values_are_rejected() -> None:
    with pytest.raises(ValueError, match="reduction"):
        methods.create("pcgrad", reduction="max")
    with pytest.raises(ValueError, match="finite and >= 0"):
        methods.create("fixed", weights=[1.0, -2.0])


@pytest.mark.parametrize("method", ["pcgrad", "graddrop", "gradvac", "rlw"])
@pytest.mark.parametrize("seed", [2.5, float("inf"), float("nan"), True])
def test_seeds_must_be_whole_numbers(method: str, seed: object) -> None:
    # 2.5 was truncated to 2 silently, inf raised an OverflowError
    with pytest.raises(ValueError, match="seed must be a whole number"):
        methods.create(method, seed=seed)
    assert methods.create(method, seed=np.int64(3)).seed == 3  # type: ignore[attr-defined]


def test_every_method_declares_family_needs_and_reference() -> None:
    for name in methods.available():
        cls = methods.get(name)
        assert cls.family in {"loss weighting", "gradient manipulation"}
        assert isinstance(cls.needs, Need)
        assert cls.reference
        assert cls.__doc__
        assert len(cls.__doc__) > 80
        if cls.family == "loss weighting":
            assert cls.needs == Need.LOSSES


def test_public_names() -> None:
    assert callable(taskbalance.aggregate)
    assert taskbalance.Balancer
    assert taskbalance.StepInfo
    assert taskbalance.__version__


def test_variants_of_other_libraries_explain_how_to_get_them() -> None:
    with pytest.raises(ValueError, match="level='representation'"):
        methods.create("mgda_ub")
    with pytest.raises(ValueError, match="reduction='mean'"):
        methods.create("pcgrad_mean")

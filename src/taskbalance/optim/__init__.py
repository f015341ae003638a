"""Multi-task optimisers (any ``torch.optim`` optimizer also works with :class:`Balancer`)."""

from taskbalance.optim.mtadam import MTAdam

__all__ = ["MTAdam"]

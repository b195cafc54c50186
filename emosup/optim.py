"""Optax optimiser from `config.optim`."""
import optax

_SCHEDULES = ("cosine", "constant")


def make_schedule(optim, total_steps):
    warmup = int(optim.warmup_steps)
    if optim.schedule == "cosine":
        return optax.warmup_cosine_decay_schedule(
            0.0, optim.lr, warmup_steps=max(warmup, 1), decay_steps=max(total_steps, warmup + 1),
            end_value=optim.lr * optim.final_lr_fraction)
    if optim.schedule == "constant":
        return optax.join_schedules(
            [optax.linear_schedule(0.0, optim.lr, max(warmup, 1)), optax.constant_schedule(optim.lr)],
            [max(warmup, 1)])
    raise ValueError(f"config.optim.schedule={optim.schedule!r}: expected one of {_SCHEDULES}")


def make_optimizer(optim, total_steps):
    """AdamW with global-norm clipping; returns (tx, schedule)."""
    schedule = make_schedule(optim, total_steps)
    parts = []
    if optim.grad_clip:
        parts.append(optax.clip_by_global_norm(optim.grad_clip))
    parts.append(optax.adamw(schedule, weight_decay=optim.weight_decay))
    return optax.chain(*parts), schedule

"""Energy forecasting: each meter's consumption in the next hour, from the last 24 hours.

Each energy meter keeps its history as its own CSV file (data/PLANT/LINE/METER.csv), one
row per hour: the 24 hourly readings before it (kwh_minus_24 .. kwh_minus_1) and the
reading to forecast (kwh_next). The files never leave the meter's machine.

Change anything here: the window, the model, the loader. The topology names this task as
`task = "energy_tasks:next_hour"`.
"""

import jax.numpy as jnp
from flax import nnx

import hierfl

WINDOW = 24
FEATURES = tuple(f"kwh_minus_{hours}" for hours in range(WINDOW, 0, -1))
SCALE = 50.0
"""A typical hourly reading (kWh): the model works at unit scale and answers in kWh."""


class NextHour(nnx.Module):
    """The last 24 readings -> one hidden layer -> the next reading, in kWh."""

    def __init__(self, spec: hierfl.InputSpec, outputs: int, *, rngs: nnx.Rngs):
        self.hidden = nnx.Linear(spec.shape[0], 32, rngs=rngs)
        self.head = nnx.Linear(32, outputs, rngs=rngs)

    def __call__(self, x):
        x = x / SCALE
        return SCALE * (x[:, -1:] + self.head(nnx.relu(self.hidden(x))))


next_hour = hierfl.task(
    "next-hour-energy",
    targets=("kwh_next",),
    model=lambda rngs, spec: NextHour(spec, 1, rngs=rngs),
    data=hierfl.csv(FEATURES, targets=["kwh_next"]),
    # Squared error at unit scale: in kWh^2 its gradients would be SCALE^2 times larger.
    loss=lambda outputs, y: jnp.mean(jnp.square((outputs - y) / SCALE), axis=-1),
    metrics=(hierfl.rmse(unit="kWh"), hierfl.mae(unit="kWh")),
    description="each meter's consumption in the next hour, from its last 24 hours",
)

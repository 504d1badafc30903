"""Press failure: will this hydraulic press fail within the next shift?

Each press logs one row per cycle window to its own CSV file (data/PLANT/LINE/PRESS.csv):
six sensor readings and a label, "ok" or "failure". The files never leave the press's
machine; hierfl trains one model across all presses of all plants.

Change anything here: the features, the model, the loader. `hierfl simulate topology.toml`
and `hierfl launch topology.toml` pick it up through the topology's
`task = "press_tasks:press_failure"`.

The readings are in their own units (degrees, bar, amperes...): `standardize=True` has
hierfl find every feature's mean and spread across all presses before round 1 (each press
sends only its counts and sums, never a row) and scale the inputs with them, in training,
in evaluation and inside the exported model, which is therefore sent raw readings.
"""

from flax import nnx

import hierfl

FEATURES = (
    "temperature_c",
    "vibration_rms",
    "pressure_bar",
    "motor_current_a",
    "cycle_time_s",
    "oil_quality",
)


class PressNet(nnx.Module):
    """Standardized readings -> two hidden layers -> one logit per class."""

    def __init__(self, spec: hierfl.InputSpec, classes: int, *, rngs: nnx.Rngs):
        width = spec.shape[0]
        self.hidden = nnx.Linear(width, 32, rngs=rngs)
        self.hidden2 = nnx.Linear(32, 16, rngs=rngs)
        self.head = nnx.Linear(16, classes, rngs=rngs)

    def __call__(self, x):
        x = nnx.relu(self.hidden(x))
        x = nnx.relu(self.hidden2(x))
        return self.head(x)


press_failure = hierfl.task(
    "press-failure",
    classes=("ok", "failure"),
    model=lambda rngs, spec: PressNet(spec, 2, rngs=rngs),
    data=hierfl.csv(FEATURES, label="failure"),
    standardize=True,
    description="hydraulic press failure within the next shift, from six sensor readings",
)

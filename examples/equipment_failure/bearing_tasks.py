"""Spindle-bearing faults from vibration windows: the example's own task, as a user writes one.

Each machine's accelerometer windows are in its own file, `data/PLANT/LINE/MACHINE.npz`
(`x`: [N, 2048] float32, acceleration in g at 12 kHz; `y`: class names), and each plant
keeps held-out windows in `data/PLANT/test.npz` (`write_data.py` writes them all).
`topology.toml` names this task as `task = "bearing_tasks:bearing_fault"`; hierfl imports
it from beside the topology file in `simulate`, `launch`, every device and `export`.
"""

import jax.numpy as jnp
from flax import nnx

import hierfl

CLASSES = ("healthy", "outer", "inner", "ball")
SAMPLE_RATE_HZ = 12_000
WINDOW = 2048
"""Samples per window: 171 ms, several shaft turns, so a fault's strike rate is visible."""


class EnvelopeSpectrumNet(nnx.Module):
    """The envelope spectrum of a window -> two hidden layers -> one logit per class.

    Envelope analysis, as a vibration engineer reads a bearing: each strike on a defect
    rings the housing's kHz resonance, so rectifying the window and averaging `decimation`
    samples keeps the strikes' envelope (at 1.5 kHz), whose spectrum peaks at the fault's
    strike rate (outer race, inner race or ball: 70-250 Hz here) and its harmonics. The
    envelope is divided by its mean (a machine's level is not a fault), and its spectrum
    is Welch's: the power of overlapping `segment`-sample pieces, averaged, 0-750 Hz in
    23 Hz bins, steadier than one piece's. Its log feeds the layers. The front end has no
    parameters, so the exported model takes raw windows.
    """

    def __init__(
        self,
        spec: hierfl.InputSpec,
        classes: int,
        *,
        decimation: int = 8,
        segment: int = 64,
        hidden: int = 64,
        rngs: nnx.Rngs,
    ):
        self.decimation, self.segment = decimation, segment
        self.length = spec.shape[0] // decimation
        self.hidden = nnx.Linear(segment // 2 + 1, hidden, rngs=rngs)
        self.hidden2 = nnx.Linear(hidden, hidden, rngs=rngs)
        self.head = nnx.Linear(hidden, classes, rngs=rngs)

    def __call__(self, x):
        batch = x.shape[0]
        rectified = jnp.abs(x - x.mean(axis=1, keepdims=True))
        envelope = rectified[:, : self.length * self.decimation]
        envelope = envelope.reshape(batch, self.length, self.decimation).mean(axis=2)
        envelope = envelope / (envelope.mean(axis=1, keepdims=True) + 1e-3) - 1.0
        hop = self.segment // 2
        pieces = jnp.stack(
            [
                envelope[:, start : start + self.segment]
                for start in range(0, self.length - self.segment + 1, hop)
            ],
            axis=1,
        )
        spectrum = jnp.fft.rfft(pieces * jnp.hanning(self.segment), axis=-1)
        power = jnp.mean(jnp.abs(spectrum) ** 2, axis=1)
        features = jnp.log(power + 0.01)
        features = nnx.relu(self.hidden(features))
        features = nnx.relu(self.hidden2(features))
        return self.head(features)


bearing_fault = hierfl.task(
    "spindle-bearing-fault",
    classes=CLASSES,
    models={"envelope-spectrum": lambda rngs, spec: EnvelopeSpectrumNet(spec, 4, rngs=rngs)},
    data=hierfl.npz(x="x", y="y"),
    input_shape=(WINDOW,),
    description="spindle-bearing faults (healthy, outer race, inner race, ball) from one vibration window",
)

"""Surface defects: is this part ok, scratched or spotted?

Each inspection camera keeps its images in its own folder, one subfolder per class
(data/PLANT/LINE/CAMERA/ok/*.png, .../scratch/*.png, .../spot/*.png). The images never
leave the camera's machine; hierfl trains one classifier across all cameras.

Change anything here: the image size, the model, the classes. The topology names this
task as `task = "defect_tasks:surface_defects"`.
"""

import jax.numpy as jnp
from flax import nnx

import hierfl

SIZE = (16, 16)


class DefectNet(nnx.Module):
    """Pixels, less the image's mean brightness (cameras differ), through two hidden
    layers to one logit per class: small enough to train on a camera's own CPU."""

    def __init__(self, spec: hierfl.InputSpec, classes: int, *, rngs: nnx.Rngs):
        pixels = spec.shape[0] * spec.shape[1] * spec.shape[2]
        self.hidden = nnx.Linear(pixels, 64, rngs=rngs)
        self.hidden2 = nnx.Linear(64, 32, rngs=rngs)
        self.head = nnx.Linear(32, classes, rngs=rngs)

    def __call__(self, x):
        x = x - jnp.mean(x, axis=(1, 2, 3), keepdims=True)
        x = nnx.relu(self.hidden(x.reshape(x.shape[0], -1)))
        return self.head(nnx.relu(self.hidden2(x)))


surface_defects = hierfl.task(
    "surface-defects",
    classes=("ok", "scratch", "spot"),
    model=lambda rngs, spec: DefectNet(spec, 3, rngs=rngs),
    data=hierfl.image_folder(size=SIZE, mode="L"),
    description="surface defects on machined parts, from 16x16 grey inspection images",
)

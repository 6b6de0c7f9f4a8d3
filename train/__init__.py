"""Training stage: `python -m train --help`. main(TrainConfig) runs the DeNiro recipe."""

from .config import TrainConfig

__all__ = ["TrainConfig"]

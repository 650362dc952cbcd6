"""Models: LEGO bricks (linear, mlp, cnn) and any timm architecture by name."""
from firstepoch.models.blocks import build, cnn, create_model, linear, mlp, timm_model

__all__ = ["build", "cnn", "create_model", "linear", "mlp", "timm_model"]

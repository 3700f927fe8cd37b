"""The tiny training config of the session bundle (importable by any test module)."""
from latentbeam.config import from_dict

# Settings that train in about a second on 2 cores; the numbers are still real.
TINY_OVERRIDES = ["model.latent_dim=2", "model.hidden_units=[16]", "train.epochs=3",
                  "train.verbose=0", "train.seed=0"]


def tiny_config(glob: str, *extra: str):
    """The config of the session's `tiny_bundle` (conftest.py), plus `extra` overrides."""
    return from_dict({"data": {"path": glob, "label": "label", "key_columns": ["id"]}},
                     TINY_OVERRIDES + list(extra))

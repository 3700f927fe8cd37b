"""Everything Keras: data sources, architectures, training, the bundle and the scoring core."""
from latentbeam.model.bundle import (Bundle, BundleInfo, Threshold, load_bundle,
                                     load_bundle_info)
from latentbeam.model.features import Feature, to_matrix
from latentbeam.model.scoring import Scores, decode, sample_latent, score

__all__ = ["Bundle", "BundleInfo", "Feature", "Scores", "Threshold", "decode", "load_bundle",
           "load_bundle_info", "sample_latent", "score", "to_matrix", "train"]


def train(config, output=None, **kwargs):
    """Trains a bundle (see latentbeam.model.training.train); imports Keras lazily."""
    from latentbeam.model.training import train as _train
    return _train(config, output, **kwargs)

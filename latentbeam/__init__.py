"""latentbeam: Keras autoencoder anomaly scoring for Apache Beam."""
__version__ = "0.1.0"

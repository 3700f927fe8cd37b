"""Beam YAML transforms: `LatentbeamScore`, `LatentbeamEncode`, `LatentbeamDecode`.

A YAML pipeline names them after a `providers:` stanza (latentbeam must be installed
where the pipeline is expanded and on the workers)::

    providers:
      - type: python
        config: {}
        transforms:
          LatentbeamScore: latentbeam.pipeline.yaml_provider.LatentbeamScore
          LatentbeamEncode: latentbeam.pipeline.yaml_provider.LatentbeamEncode
          LatentbeamDecode: latentbeam.pipeline.yaml_provider.LatentbeamDecode

or, the same stanza shipped with the package, `- include: PATH` with the path that
`python -m latentbeam.pipeline.yaml_provider` prints. Each takes schema'd rows (e.g.
from `ReadFromParquet`) and gives schema'd rows, so `Filter`, `MapToFields` and
`WriteToParquet` follow unchanged. With `error_handling: {output: NAME}` the rows that
cannot be scored come out as the `NAME` output (fields of `dead_letters.DEAD_LETTER_SCHEMA`)
instead of being dropped (they are always counted in the "latentbeam" metrics).

This module has no `from __future__ import annotations`: Beam YAML reads the
parameter annotations as types to build and check each transform's config schema.
"""
import os
import sys
from typing import Any, List, Mapping, Optional

import apache_beam as beam

from latentbeam.errors import ConfigError

PROVIDERS_FILE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "providers.yaml")


class _WithDeadLetters(beam.PTransform):
    """Runs a latentbeam transform; returns {"output": rows, NAME: dead-letter rows}."""

    def __init__(self, transform, error_handling: Optional[Mapping[str, Any]]):
        super().__init__()
        self._transform = transform
        self._errors = _error_output(error_handling)

    def expand(self, pcoll):
        if self._errors is None:
            return pcoll | "Apply" >> self._transform
        from latentbeam.pipeline.dead_letters import DEAD_LETTER_SCHEMA
        from latentbeam.pipeline.transforms import arrow_to_beam_fields
        from apache_beam.typehints.row_type import RowTypeConstraint

        rows, dead = pcoll | "Apply" >> self._transform.with_dead_letters()
        dead_type = RowTypeConstraint.from_fields(arrow_to_beam_fields(DEAD_LETTER_SCHEMA))
        dead = dead | "Dead letters as rows" >> beam.Map(_as_row).with_output_types(dead_type)
        return {"output": rows, self._errors: dead}


def _as_row(record: Mapping[str, Any]) -> beam.Row:
    return beam.Row(**record)


def _error_output(error_handling: Optional[Mapping[str, Any]]) -> Optional[str]:
    if not error_handling:
        return None
    if not isinstance(error_handling, Mapping) or "output" not in error_handling:
        raise ConfigError(f"error_handling expects {{output: NAME}}. Received: {error_handling!r}")
    return str(error_handling["output"])


def LatentbeamScore(bundle: str, key_columns: Optional[List[str]] = None,
                    per_feature_errors: bool = False, reconstruction: bool = False,
                    latent_distance: bool = False,
                    error_handling: Optional[Mapping[str, Any]] = None,
                    missing: str = "reject", top_features: int = 0):
    """Scores rows with a latentbeam model bundle.

    Output fields: the key columns, latent, reconstruction_error, anomaly_score,
    is_anomaly, model_version (and feature_errors / reconstruction / top_features when
    asked for).

    Args:
      bundle: model bundle directory (local, gs://, s3://).
      key_columns: input fields copied to the output unchanged.
      per_feature_errors: add feature_errors, the squared error per input.
      reconstruction: add reconstruction, X-hat in input units.
      latent_distance: add latent_distance, the code's distance to training codes.
      error_handling: {output: NAME} to get unusable rows as the output NAME.
      missing: null/NaN feature values: reject (default), impute (training medians) or
        mask (observed inputs only; adds coverage).
      top_features: K > 0 adds top_features, the K inputs with the largest share of the
        row's error, as rows {name, share}.
    """
    from latentbeam.pipeline.transforms import Score

    return _WithDeadLetters(Score(bundle, key_columns=key_columns or (),
                                  per_feature_errors=per_feature_errors,
                                  reconstruction=reconstruction,
                                  latent_distance=latent_distance, missing=missing,
                                  top_features=top_features),
                            error_handling)


def LatentbeamEncode(bundle: str, key_columns: Optional[List[str]] = None,
                     error_handling: Optional[Mapping[str, Any]] = None):
    """Encodes rows to latent codes: the key columns, latent and model_version.

    Args:
      bundle: model bundle directory (local, gs://, s3://).
      key_columns: input fields copied to the output unchanged.
      error_handling: {output: NAME} to get unusable rows as the output NAME.
    """
    from latentbeam.pipeline.transforms import Encode

    return _WithDeadLetters(Encode(bundle, key_columns=key_columns or ()), error_handling)


def LatentbeamDecode(bundle: str, key_columns: Optional[List[str]] = None,
                     error_handling: Optional[Mapping[str, Any]] = None):
    """Decodes a `latent` field to the bundle's features in input units.

    Args:
      bundle: model bundle directory (local, gs://, s3://).
      key_columns: input fields copied to the output unchanged.
      error_handling: {output: NAME} to get unusable rows as the output NAME.
    """
    from latentbeam.pipeline.transforms import Decode

    return _WithDeadLetters(Decode(bundle, key_columns=key_columns or ()), error_handling)


if __name__ == "__main__":
    sys.stdout.write(PROVIDERS_FILE + "\n")

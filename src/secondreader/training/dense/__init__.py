"""The dense localisation recipe (``cxr-nodule``; ``data.kind: lesion_insertion``): U-Nets trained on
chest films with inserted nodules, evaluated leaving one real background out, written as bundles.

Where things are, in the order a run uses them:

- :mod:`.data`: real backgrounds, training and validation pools (model-A nodules), test sets
  (model-B nodules through the serving chain), which pictures each fit uses;
- :mod:`.inputs`: the serving chain's percentile stretch and normalisation on batches;
- :mod:`.augment`: the training batches' augmentation and crops;
- :mod:`.fit`: fitting one network (loss, batches, hard negatives, checkpoints);
- :mod:`.folds`: the folds and the final model, in this process or in worker processes;
- :mod:`.evaluate`: scoring as serving scores, calibration, metrics and FROC summaries;
- :mod:`.bundle`: the bundle's metadata, routing gate and files;
- :mod:`.run`: :func:`~.run.train_localisation`, the whole run step by step.

The real-nodule recipe (:mod:`secondreader.training.realnodule`) reuses these parts; what both
this recipe and the classifier's (:mod:`secondreader.training.train`) need is in
:mod:`secondreader.training.common`.
"""

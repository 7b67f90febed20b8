"""The training pipeline: config → trained MONAI network → evaluated, calibrated model bundle.

``secondreader train CONFIG`` enters at :func:`.train.train`, which picks the recipe by ``data.kind``:

- classifiers (``medmnist_npz``, ``manifest``, ``nih_pneumonia``): :mod:`.train`, with its data in
  :mod:`.data` and :mod:`.realdata` and its card in :mod:`.modelcard`;
- the dense localiser on inserted nodules (``lesion_insertion``): :mod:`.dense` (data, augmentation,
  fit, folds, evaluation, bundle), with the nodule models in :mod:`.lesions`;
- the dense localiser on JSRT's real nodules (``jsrt``): :mod:`.realnodule`, reusing :mod:`.dense`.

Shared by all of them: :mod:`.common` (device, calibration on validation, bundle header and weights),
:mod:`.config`, :mod:`.losses`, :mod:`.metrics`, :mod:`.froc`, :mod:`.plots`. ``secondreader
evaluate`` (a shipped bundle's figures recomputed) is :mod:`.evaluate`.

Imports point one way (``tests/unit/test_import_rules.py``): no cycles among these modules, and
nothing here imports the audit, the service or the CLI.
"""

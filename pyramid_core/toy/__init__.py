"""The toy world: a synthetic video set small enough to train a Pyramid Flow model on a CPU
(:mod:`.world`), and pixel measures that judge whether a video of it shows what its prompt
asked for (:mod:`.judge`). ``scripts/train_toy_model.py`` trains a toy model on it with the
pack's own CLI; :mod:`.model` samples such a model and :mod:`.checks` judges its videos
(text-to-video, image-to-video, continuation), as ``benchmarks/toy_quality.py`` reports."""

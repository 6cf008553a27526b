"""The toy world: a synthetic video set small enough to train a Pyramid Flow model on a CPU
(:mod:`.world`), and pixel measures that judge whether a video of it shows what its prompt
asked for (:mod:`.judge`). ``scripts/train_toy_model.py`` trains the toy model on it; the
quality tests and ``benchmarks/toy_quality.py`` judge that model's videos."""

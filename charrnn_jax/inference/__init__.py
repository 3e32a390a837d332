"""Inference: the sampler, full-split scoring (and the loss it shares with training),
classification, text metrics, and loading a trained workdir's params for all of them.
Never imports training."""

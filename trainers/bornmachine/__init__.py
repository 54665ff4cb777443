"""Born machine: one MPS that classifies and generates, and its four trainers.

mps.py          the model: amplitudes, exact partition function, exact differentiable sampling
contraction.py  the amplitude contraction, forward and backward written by hand
features.py     orthonormal feature maps on [0, 1] (Fourier, Legendre)
data.py         datasets, stratified splits, scaling fitted on the training split
metrics.py      accuracy, NLLs, FGSM/PGD robustness, Frechet distance
trainers.py     born-classify, born-generative and the shared BornTrainer
gan.py          born-gan (critic.py: the class-aware critic; pretrained.py: classifier checkpoints)
adversarial.py  born-adversarial (PGD-AT, TRADES)
figures.py      confusion matrix, generated samples
config.py       the configs (pydantic, no torch: the registry imports them)
"""

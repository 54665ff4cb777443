"""Synthetic-aperture imaging (Fourier ptychography with a known binary pupil).

Foundations shared by the `prism` (deep decoder) and `mopie` (ePIE-style) engines:
objects (`objects`), the forward model (`forward`), sampling patterns and coverage
(`sampling`), image-quality metrics (`metrics`) and the shared config (`config`).
Plain PyTorch/numpy, no Ray.
"""

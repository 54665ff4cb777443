"""The built-in names and file types of the imaging configs: one definition, read by config.py
(no torch, for the command line) and by objects.py / sampling.py (which import torch)."""

BUILTIN_IMAGES = ("moon", "hubble_deep_field")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".npy")
PATTERNS = ("fermat", "random", "grid", "star")
PATTERN_FILE_SUFFIXES = (".py", ".csv", ".npy")

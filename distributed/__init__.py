"""Everything that imports Ray: the worker loop, the contexts, TorchTrainer and Tuner builders."""

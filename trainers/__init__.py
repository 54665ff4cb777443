"""trainyard's algorithms: plain PyTorch, no Ray (Ray lives in distributed/)."""

"""The training engine: ``fit`` (plain PyTorch, never imports Ray), evaluation, checkpoints, pre-training."""

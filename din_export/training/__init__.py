"""Learning the weights: the training loop, data parallelism, augmentation, metrics, tuning and the training plot."""

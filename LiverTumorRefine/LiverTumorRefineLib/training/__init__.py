"""Training: phantoms, the coarse simulator, datasets, augmentation and the training loops."""

"""Feature mimicking: MSE between paired teacher and student feature maps (``FeatureMSELoss``)."""
